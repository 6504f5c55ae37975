"""Spatial tiling for VAE decode: decode overlapping latent tiles one after another and blend them linearly.

Plays the role of diffusers `AutoencoderKLWan.tiled_decode` (not in the original Wan repo), with our own
layout: all tiles have the same shape (the last tile in each direction is aligned to the far edge), so one
compiled decode runs them in a `lax.scan` that adds each blended tile into the output as it goes: peak memory
is the output plus one tile's decode. Blending: each tile's pixels get
a weight that ramps linearly from 0 to 1 across the `overlap` band on every side that has a neighbour (1 at the
image border), and the output is the weight-normalised sum.

Tiling is an approximation, not a reformulation: convs see zero padding at tile edges instead of the
neighbouring pixels, and the mid-block attention sees only the tile. Measured error on the `tiny` model with
random weights is asserted in tests/vae/test_chunking.py.
"""

import jax
import jax.numpy as jnp
import numpy as np

from wanjax.errors import UsageError

DEFAULT_OVERLAP = 8  # latent pixels (64 video pixels)


def check_tile(tile, overlap, hw):
  """Validates `tile=(th, tw)` in latent pixels against the latent size `hw`; returns a hashable tuple clipped
  to the latent size, or None when no tiling is needed."""
  if tile is None:
    return None
  try:
    th, tw = (int(t) for t in tile)
  except (TypeError, ValueError):
    raise UsageError(f"tile={tile!r} must be two latent sizes (th, tw), e.g. (32, 32)") from None
  if overlap < 0 or th <= overlap or tw <= overlap:
    raise UsageError(f"tile={tuple(tile)} must be larger than overlap={overlap} latent pixels in both "
                     f"directions, e.g. tile=(32, 32) with overlap=8")
  th, tw = min(th, hw[0]), min(tw, hw[1])
  if (th, tw) == tuple(hw):
    return None
  return th, tw


def tile_starts(n, t, overlap):
  """Start offsets of length-`t` tiles covering `n` with at least `overlap` shared pixels; last tile at n-t."""
  if t >= n:
    return [0]
  starts = list(range(0, n - t, t - overlap))
  return starts + [n - t]


def _ramp(start, length, total, band):
  """Per-pixel weights of one tile along one axis: linear ramps over `band` pixels toward inner edges."""
  p = np.arange(length, dtype=np.float64) + 0.5
  w = np.ones(length)
  if start > 0:
    w = np.minimum(w, p / band)
  if start + length < total:
    w = np.minimum(w, (length - p) / band)
  return w


def decode_tiled(decode_fn, z, tile, overlap, scale):
  """Decodes `z [B, F, h, w, C]` tile by tile with `decode_fn` (latent tile -> video tile, spatial ×`scale`)
  and blends the results. Returns `[B, T, h·scale, w·scale, 3]` float32.

  One `lax.scan` over the tiles carries the weighted sum: each step decodes one tile and adds its weighted
  pixels in place, so the working set is the output plus one tile (no stack of every tile's pixels)."""
  b, f, h, w, c = z.shape
  th, tw = tile
  ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
  origins = [(y, x) for y in ys for x in xs]
  band = max(overlap * scale, 1)
  total = np.zeros((h * scale, w * scale))
  weights = []
  for y, x in origins:
    wt = np.outer(_ramp(y * scale, th * scale, h * scale, band), _ramp(x * scale, tw * scale, w * scale, band))
    total[y * scale:(y + th) * scale, x * scale:(x + tw) * scale] += wt
    weights.append(wt)
  out = jax.eval_shape(decode_fn, jax.ShapeDtypeStruct((b, f, th, tw, c), z.dtype))   # [B, T, th·s, tw·s, 3]
  zero = jnp.zeros((), jnp.int32)

  def add_tile(video, xs_i):
    (y, x), wt = xs_i
    zt = jax.lax.dynamic_slice(z, (zero, zero, y, x, zero), (b, f, th, tw, c))
    pix = decode_fn(zt).astype(jnp.float32) * wt[None, None, :, :, None]
    at = (zero, zero, y * scale, x * scale, zero)
    return jax.lax.dynamic_update_slice(video, jax.lax.dynamic_slice(video, at, pix.shape) + pix, at), None

  video = jnp.zeros((b, out.shape[1], h * scale, w * scale, out.shape[-1]), jnp.float32)
  video, _ = jax.lax.scan(add_tile, video, (jnp.asarray(origins, jnp.int32),
                                            jnp.asarray(np.stack(weights), jnp.float32)))
  return video / jnp.asarray(total, jnp.float32)[None, None, :, :, None]
