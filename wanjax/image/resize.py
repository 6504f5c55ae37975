"""Bicubic resize equal to torch `F.interpolate(mode='bicubic', align_corners=False)`, as two matmuls.

Mirrors ATen's `upsample_bicubic2d` (used by the reference in `wan/image2video.py` for the VAE conditioning
frame and in `wan/modules/clip.py` for the CLIP input; spec `wan_model.md` §1.14, §5.3, pitfall 12):
cubic-convolution kernel with A = −0.75, source coordinate `(dst + 0.5)·in/out − 0.5` (not clamped),
the four taps `floor(src) − 1 … floor(src) + 2` clamped to the border, no antialiasing, no output clamp.
`jax.image.resize(method='cubic')` is a different filter (Keys a = −0.5, antialiased when shrinking).

The resize is separable, so it is `W_h @ x @ W_w^T` with `[out, in]` weight matrices built once per size pair
in NumPy (float64, then float32). Shapes are static, so the matrices are trace-time constants under jit.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wanjax.errors import UsageError

A = -0.75  # torch's cubic-convolution coefficient


def _cubic_weights(t):
  """The four tap weights for fractional offset `t` (taps at −1, 0, +1, +2); ATen
  `get_cubic_upsample_coefficients`."""
  def near(x):  # |x| <= 1
    return ((A + 2) * x - (A + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """`[out_size, in_size]` float32 matrix M with `resized = M @ x` along one axis."""
  if in_size < 1 or out_size < 1:
    raise UsageError(f"cannot resize between sizes {in_size} and {out_size}; both must be >= 1")
  # Quirk (§1.14): ATen computes the scale in float32 and the source coordinate as one fused multiply-add
  # rounded to float32; the float64 coordinate differs by up to ~2e-5 pixel at 480 -> 224, visible as ~1e-4
  # on noisy images, so round like it does.
  f32 = np.float32
  scale = np.float64(f32(in_size) / f32(out_size))
  src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(f32)
  base = np.floor(src)
  w = _cubic_weights((src - base).astype(np.float64))               # [out, 4]
  taps = base[:, None].astype(np.int64) + np.arange(-1, 3)[None, :]  # [out, 4]
  taps = np.clip(taps, 0, in_size - 1)  # border taps are clamped, so their weights pile onto the edge pixel
  m = np.zeros((out_size, in_size), np.float64)
  np.add.at(m, (np.repeat(np.arange(out_size), 4), taps.reshape(-1)), w.reshape(-1))
  m = m.astype(np.float32)
  m.setflags(write=False)  # cached: shared by every caller
  return m


def bicubic_resize(x, size):
  """Resizes channels-last images `x [..., H, W, C]` to `size = (h, w)`; returns `[..., h, w, C]` float32.

  Equal to torch `F.interpolate(x_nchw, size=size, mode='bicubic', align_corners=False)` (≈1e-6 abs).
  """
  h, w = (int(s) for s in size)
  if x.ndim < 3:
    raise UsageError(f"bicubic_resize expects [..., H, W, C] images, got shape {tuple(x.shape)}")
  in_h, in_w = x.shape[-3], x.shape[-2]
  x = jnp.asarray(x, jnp.float32)
  mh = jnp.asarray(resize_matrix(in_h, h))  # [h, H]
  mw = jnp.asarray(resize_matrix(in_w, w))  # [w, W]
  hi = jax.lax.Precision.HIGHEST  # keep fp32 on accelerators (no TF32/bf16 passes)
  if (in_h, in_w) != (h, w):
    x = jnp.einsum("hH,...HWC->...hWC", mh, x, precision=hi)
    x = jnp.einsum("wW,...hWC->...hwC", mw, x, precision=hi)
  return x
