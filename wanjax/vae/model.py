"""The Wan2.1 VAE (`WanVAE`): causal 3-D encoder/decoder, channels-last, with chunked (scanned) and
full-sequence temporal processing.

Mirrors `wan/modules/vae.py` (`Encoder3d`, `Decoder3d`, `WanVAE_`, `WanVAE.encode/decode`) and diffusers
`AutoencoderKLWan`; spec `wan_model.md` §4.3–§4.6. Parameter paths follow the original module tree
(`encoder.downsamples.3.conv1.kernel` for `encoder.downsamples.3.residual.2.weight`; the full name table is
`converters/names/vae.py`).

Two temporal formulations, equal to float rounding (tests/vae/test_chunking.py):
- full sequence (`chunked=False`): every layer sees the whole clip (spec §4.5, "equivalent non-chunked
  formulation"); simple, the oracle, memory grows with the frame count.
- chunked (default): like the reference, encode frame 0, then `lax.scan` over 4-frame chunks; decode latent
  frame 0, then `lax.scan` over the remaining latent frames (each gives 4 frames), carrying a fixed-shape
  feature cache. The per-chunk step is its own `jax.jit`, traced once per spatial size whatever the frame
  count; only the scan length changes.
Optional spatial tiling of decode (`tile`, `overlap`) bounds memory further (an approximation; `tiling.py`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax.errors import UsageError
from wanjax.precision import FLOAT32, get_policy
from wanjax.vae import tiling
from wanjax.vae.config import VAEConfig
from wanjax.vae.layers import AttentionBlock, CausalConv3d, ResidualBlock, Resample, RMSNorm, silu

# Python-side trace counts of the jitted per-chunk steps (tests assert one trace for several frame counts).
TRACE_COUNTS = {"encode_chunk": 0, "decode_chunk": 0}


def _run(layers, x, caches, first):
  """Runs a list of blocks chunk-wise; returns (x, list of their new caches)."""
  new = []
  for i, layer in enumerate(layers):
    x, c = layer.step(x, None if first else caches[i], first)
    new.append(c)
  return x, new


class Encoder3d(nnx.Module):
  """conv1 -> downsamples (residual blocks + resamples) -> middle [res, attn, res] -> head (norm, SiLU, conv)."""

  def __init__(self, cfg: VAEConfig, *, policy, rngs: nnx.Rngs):
    dims = [cfg.dim * m for m in (1,) + cfg.dim_mult]
    self.conv1 = CausalConv3d(3, dims[0], 3, policy=policy, rngs=rngs)
    layers = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(cfg.num_res_blocks):
        layers.append(ResidualBlock(cin, cout, policy=policy, rngs=rngs))
        cin = cout
      if i != len(cfg.dim_mult) - 1:
        mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
        layers.append(Resample(cout, mode, policy=policy, rngs=rngs))
    self.downsamples = nnx.List(layers)
    c = dims[-1]
    self.middle = nnx.List([ResidualBlock(c, c, policy=policy, rngs=rngs), AttentionBlock(c, policy=policy, rngs=rngs),
                            ResidualBlock(c, c, policy=policy, rngs=rngs)])
    self.head_norm = RMSNorm(c, policy=policy)                                              # head.0
    self.head_conv = CausalConv3d(c, 2 * cfg.z_dim, 3, policy=policy, rngs=rngs)          # head.2

  def __call__(self, x):  # [B, T, H, W, 3] -> [B, 1+(T-1)/4, H/8, W/8, 2z]
    x = self.conv1(x)
    for layer in list(self.downsamples) + list(self.middle):
      x = layer(x)
    return self.head_conv(silu(self.head_norm(x)))

  def step(self, x, cache, first=False):
    """One chunk (1 frame if `first`, else 4) -> (1 latent frame, new cache)."""
    x, c_in = self.conv1.step(x, None if first else cache["conv1"])
    x, c_down = _run(self.downsamples, x, None if first else cache["downsamples"], first)
    x, c_mid = _run(self.middle, x, None if first else cache["middle"], first)
    x, c_head = self.head_conv.step(silu(self.head_norm(x)), None if first else cache["head"])
    return x, {"conv1": c_in, "downsamples": c_down, "middle": c_mid, "head": c_head}


class Decoder3d(nnx.Module):
  """conv1 -> middle [res, attn, res] -> upsamples (residual blocks + resamples) -> head (norm, SiLU, conv)."""

  def __init__(self, cfg: VAEConfig, *, policy, rngs: nnx.Rngs):
    dims = [cfg.dim * m for m in (cfg.dim_mult[-1],) + cfg.dim_mult[::-1]]
    temperal_upsample = cfg.temperal_downsample[::-1]
    self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, policy=policy, rngs=rngs)
    c = dims[0]
    self.middle = nnx.List([ResidualBlock(c, c, policy=policy, rngs=rngs), AttentionBlock(c, policy=policy, rngs=rngs),
                            ResidualBlock(c, c, policy=policy, rngs=rngs)])
    layers = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      if i > 0:
        cin //= 2  # the previous stage's resample halved the channels
      for _ in range(cfg.num_res_blocks + 1):
        layers.append(ResidualBlock(cin, cout, policy=policy, rngs=rngs))
        cin = cout
      if i != len(cfg.dim_mult) - 1:
        mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
        layers.append(Resample(cout, mode, policy=policy, rngs=rngs))
    self.upsamples = nnx.List(layers)
    self.head_norm = RMSNorm(dims[-1], policy=policy)                                  # head.0
    self.head_conv = CausalConv3d(dims[-1], 3, 3, policy=policy, rngs=rngs)           # head.2

  def __call__(self, x):  # [B, F, h, w, z] -> [B, 1+4(F-1), 8h, 8w, 3]
    x = self.conv1(x)
    for layer in list(self.middle) + list(self.upsamples):
      x = layer(x)
    return self.head_conv(silu(self.head_norm(x)))

  def step(self, x, cache, first=False):
    """One latent frame -> (1 frame if `first`, else 4; new cache)."""
    x, c_in = self.conv1.step(x, None if first else cache["conv1"])
    x, c_mid = _run(self.middle, x, None if first else cache["middle"], first)
    x, c_up = _run(self.upsamples, x, None if first else cache["upsamples"], first)
    x, c_head = self.head_conv.step(silu(self.head_norm(x)), None if first else cache["head"])
    return x, {"conv1": c_in, "middle": c_mid, "upsamples": c_up, "head": c_head}


class WanVAE(nnx.Module):
  """Video `[B, T, H, W, 3]` in [-1, 1] <-> normalised latent `[B, F, h, w, z]`, T = 1+4(F-1), H = 8h, W = 8w."""

  def __init__(self, cfg: VAEConfig, *, policy=FLOAT32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.policy = policy = get_policy(policy)
    self.encoder = Encoder3d(cfg, policy=policy, rngs=rngs)
    self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1, policy=policy, rngs=rngs)  # quant_conv
    self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1, policy=policy, rngs=rngs)          # post_quant_conv
    self.decoder = Decoder3d(cfg, policy=policy, rngs=rngs)

  # Latent normalisation (spec §4.6): z = (mu - mean) · (1/std); decode undoes it as z / (1/std) + mean.
  def normalize(self, mu):
    mean = jnp.asarray(self.cfg.latents_mean, jnp.float32)
    inv_std = 1.0 / jnp.asarray(self.cfg.latents_std, jnp.float32)
    return (mu.astype(jnp.float32) - mean) * inv_std

  def denormalize(self, z):
    mean = jnp.asarray(self.cfg.latents_mean, jnp.float32)
    inv_std = 1.0 / jnp.asarray(self.cfg.latents_std, jnp.float32)
    return z.astype(jnp.float32) / inv_std + mean

  def mu(self, h):
    """Top-level `conv1` (quant_conv) on the encoder output, then the mean half of the channels."""
    return self.conv1(h)[..., :self.cfg.z_dim]

  def encode(self, video, *, chunked=True):
    """Video `[B, T, H, W, 3]` in [-1, 1] -> normalised latent mean `[B, F, h, w, z]` (float32)."""
    return encode_video(self, video, chunked=chunked)

  def decode(self, latent, *, chunked=True, tile=None, overlap=tiling.DEFAULT_OVERLAP):
    """Normalised latent `[B, F, h, w, z]` -> video `[B, 1+4(F-1), 8h, 8w, 3]` clamped to [-1, 1] (float32).
    `tile=(th, tw)`: decode in latent tiles of that size overlapping by `overlap` latent pixels, blended
    linearly (bounds memory; approximate, see tiling.py)."""
    return decode_latent(self, latent, chunked=chunked, tile=tile, overlap=overlap)


def create_vae(cfg: VAEConfig, *, policy=FLOAT32, seed=0) -> WanVAE:
  """A random-weight WanVAE for tests and benchmarks, filled on the host with NumPy (torch's default conv init
  bound 1/sqrt(fan_in), norm scales 1): on CPU, device-side init compiles one slow RNG program per shape."""
  policy = get_policy(policy)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, policy=policy, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  flat = dict(nnx.to_flat_state(state))

  def fill(path, var):
    shape = var.get_value().shape
    if path[-1] == "scale":
      value = np.ones(shape, np.float32)
    else:
      kernel_shape = flat[path[:-1] + ("kernel",)].get_value().shape
      bound = 1.0 / np.sqrt(np.prod(kernel_shape[:-1]))
      value = rng.uniform(-bound, bound, shape).astype(np.float32)
    return var.replace(jnp.asarray(value, policy.param_dtype))

  return nnx.merge(graphdef, nnx.from_flat_state([(p, fill(p, v)) for p, v in flat.items()]))


# ---------------------------------------------------------------------------------------------------------------
# Shape checks (at the edge, before compiling)

def check_video_shape(cfg: VAEConfig, shape):
  if len(shape) != 5 or shape[-1] != 3:
    raise UsageError(f"video shape {tuple(shape)} must be [B, T, H, W, 3] (channels-last RGB in [-1, 1])")
  t, h, w = shape[1:4]
  tf, sf = cfg.temporal_factor, cfg.spatial_factor
  if (t - 1) % tf:
    lo = 1 + tf * ((t - 1) // tf)
    raise UsageError(f"num_frames={t} must be {tf}k+1 (e.g. {lo} or {lo + tf}; 81 for Wan2.1)")
  if h % sf or w % sf:
    raise UsageError(f"video height×width {h}×{w} must both be divisible by {sf} (e.g. "
                     f"{max(sf, h - h % sf)}×{max(sf, w - w % sf)}; 480×832 for Wan2.1)")


def check_latent_shape(cfg: VAEConfig, shape):
  if len(shape) != 5 or shape[-1] != cfg.z_dim or shape[1] < 1:
    raise UsageError(f"latent shape {tuple(shape)} must be [B, F, h, w, {cfg.z_dim}] with F >= 1 "
                     f"(channels-last; e.g. [1, 21, 60, 104, 16] for 81×480×832)")


# ---------------------------------------------------------------------------------------------------------------
# Jitted pure functions of (graphdef, params). The chunk steps are separate jits so that their trace is cached
# across frame counts (a nested jit reuses its trace for the same input shapes).

@functools.partial(jax.jit, static_argnums=0)
def _encode_first(graphdef, state, x):
  return nnx.merge(graphdef, state).encoder.step(x, None, first=True)


@functools.partial(jax.jit, static_argnums=0)
def _encode_chunk(graphdef, state, cache, x):
  TRACE_COUNTS["encode_chunk"] += 1
  y, cache = nnx.merge(graphdef, state).encoder.step(x, cache)
  return cache, y


@functools.partial(jax.jit, static_argnums=0)
def _decode_first(graphdef, state, z):
  vae = nnx.merge(graphdef, state)
  return vae.decoder.step(vae.conv2(z), None, first=True)


@functools.partial(jax.jit, static_argnums=0)
def _decode_chunk(graphdef, state, cache, z):
  TRACE_COUNTS["decode_chunk"] += 1
  vae = nnx.merge(graphdef, state)
  y, cache = vae.decoder.step(vae.conv2(z), cache)
  return cache, y


def _scan_chunks(step, graphdef, state, cache, xs, size):
  """Scans `step` over `xs [B, n·size, ...]` in chunks of `size` frames; returns `[B, n·out, ...]`."""
  b, n = xs.shape[0], xs.shape[1] // size
  chunks = jnp.moveaxis(xs.reshape((b, n, size) + xs.shape[2:]), 1, 0)      # [n, B, size, ...]
  _, ys = jax.lax.scan(lambda c, x: step(graphdef, state, c, x), cache, chunks)
  ys = jnp.moveaxis(ys, 0, 1)                                                # [B, n, out, ...]
  return ys.reshape((b, n * ys.shape[2]) + ys.shape[3:])


@functools.partial(jax.jit, static_argnums=(0, 2))
def _encode(graphdef, state, chunked, video):
  vae = nnx.merge(graphdef, state)
  if not chunked:
    return vae.normalize(vae.mu(vae.encoder(video)))
  tf = vae.cfg.temporal_factor
  h, cache = _encode_first(graphdef, state, video[:, :1])
  if video.shape[1] > 1:
    rest = _scan_chunks(_encode_chunk, graphdef, state, cache, video[:, 1:], tf)
    h = jnp.concatenate([h, rest.astype(h.dtype)], axis=1)
  return vae.normalize(vae.mu(h))


def _decode_raw(graphdef, state, chunked, z):
  """Unnormalised latent -> unclamped video."""
  vae = nnx.merge(graphdef, state)
  if not chunked:
    return vae.decoder(vae.conv2(z)).astype(jnp.float32)
  y, cache = _decode_first(graphdef, state, z[:, :1])
  if z.shape[1] > 1:
    rest = _scan_chunks(_decode_chunk, graphdef, state, cache, z[:, 1:], 1)
    y = jnp.concatenate([y, rest.astype(y.dtype)], axis=1)
  return y.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 2, 4, 5))
def _decode(graphdef, state, chunked, latent, tile, overlap):
  vae = nnx.merge(graphdef, state)
  z = vae.denormalize(latent).astype(vae.policy.compute_dtype)
  if tile is None:
    video = _decode_raw(graphdef, state, chunked, z)
  else:
    video = tiling.decode_tiled(lambda t: _decode_raw(graphdef, state, chunked, t), z, tile, overlap,
                                vae.cfg.spatial_factor)
  return jnp.clip(video, -1.0, 1.0)


def encode_video(vae: WanVAE, video, *, chunked=True):
  """Video `[B, T, H, W, 3]` in [-1, 1] (T = 4k+1, H and W divisible by 8) -> normalised latent mean
  `[B, 1+k, H/8, W/8, z]` float32. Used by `infer.forward --component vae_encode`."""
  check_video_shape(vae.cfg, jnp.shape(video))
  graphdef, state = nnx.split(vae)
  return _encode(graphdef, state, bool(chunked), jnp.asarray(video, vae.policy.compute_dtype))


def decode_latent(vae: WanVAE, latent, *, chunked=True, tile=None, overlap=tiling.DEFAULT_OVERLAP):
  """Normalised latent `[B, F, h, w, z]` -> video `[B, 1+4(F-1), 8h, 8w, 3]` in [-1, 1] float32. Used by
  `infer.forward --component vae_decode`."""
  check_latent_shape(vae.cfg, jnp.shape(latent))
  tile = tiling.check_tile(tile, overlap, jnp.shape(latent)[2:4])
  graphdef, state = nnx.split(vae)
  return _decode(graphdef, state, bool(chunked), jnp.asarray(latent, jnp.float32), tile, int(overlap))
