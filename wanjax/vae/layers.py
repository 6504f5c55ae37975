"""Wan VAE building blocks, channels-last: causal 3-D conv, RMS norm, residual block, attention block, resample.

Mirrors `wan/modules/vae.py` (`CausalConv3d`, `RMS_norm`, `ResidualBlock`, `AttentionBlock`, `Resample`) and
diffusers `autoencoder_kl_wan.py` (`WanCausalConv3d`, ...); spec `wan_model.md` §4.2, §4.5, §8 pitfall 11.

Activations are `[B, T, H, W, C]`. Every block has two entry points:
- `__call__(x)`: the exact full-sequence formulation of §4.5 (causal zero padding over the whole clip);
- `step(x, cache, first)`: one temporal chunk with a fixed-shape feature cache (the reference's chunked
  `feat_cache`). `first=True` is the first chunk: the incoming cache is ignored (`None`) and a fresh one is
  returned, so its shapes define the scan carry for every later chunk.
Kernel-3 causal convs cache the last `CACHE_T = 2` frames of their input. A zero cache is exactly the causal
zero padding, so the first chunk starts from zeros and the same code path serves both.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from wanjax import sharding as shd
from wanjax.nn import matmul_output_dtype
from wanjax.ops.attention import attention

CACHE_T = 2
_CONV3D = ("NDHWC", "DHWIO", "NDHWC")
_CONV2D = ("NHWC", "HWIO", "NHWC")


def _torch_uniform(fan_in):
  """torch's default conv init bound 1/sqrt(fan_in): random weights with sensible activations."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def _precision(policy):
  # fp32 parity with the fp32 reference needs true fp32 convs (no TF32 on GPUs).
  return jax.lax.Precision.HIGHEST if policy.compute_dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def conv_output_dtype(compute_dtype):
  """The dtype a conv / 1x1 matmul writes before its bias: the half-precision compute dtype under bf16, float32
  under float32 (`wanjax.nn.matmul_output_dtype`, docs/decisions.md "bf16 matmul outputs"). One name so that
  `benchmarks/vae_decode.py --conv-out float32` can time the float32-product form against it."""
  return matmul_output_dtype(compute_dtype)


CONV3D_FORMS = ("conv3d", "fold2d")
UPSAMPLE_FORMS = ("repeat", "subpixel")


def conv3d_form():
  """How a causal conv with a temporal kernel > 1 and temporal stride 1 is computed: "conv3d" (one 3-D conv) or
  "fold2d" (its temporal taps folded into the input channels: one 2-D conv over kt·Cin channels per output frame).
  The same sums in another kernel; a module-level name so that `benchmarks/vae_decode.py --conv3d` can time both
  (docs/decisions.md "VAE conv forms")."""
  return "conv3d"


def upsample_form():
  """How the ×2 nearest upsample + 3×3 conv of the decoder is computed: "repeat" (repeat the pixels, then the
  3×3 conv) or "subpixel" (four 2×2 convs of the low-resolution input, one per output phase, interleaved: the
  same result with 16/36 of the multiply-adds). Patched by `benchmarks/vae_decode.py --upsample`."""
  return "repeat"


def _add_bias(y, bias, cd):
  """`y + bias` in float32, rounded to the compute dtype."""
  return (y.astype(jnp.float32) + bias.astype(jnp.float32)).astype(cd)


def silu(x):
  return jax.nn.silu(x)


class CausalConv3d(nnx.Module):
  """Conv3d with the reference's causal padding: `padding=(pt, ph, pw)` means 2·pt zero frames in front (none
  behind) and ph/pw on both sides of H/W. Kernel `[kt, kh, kw, Cin, Cout]` (torch `weight.transpose(2,3,4,1,0)`)."""

  def __init__(self, cin, cout, kernel=3, *, stride=1, padding=None, policy, rngs: nnx.Rngs):
    kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    if padding is None:
      padding = (kt // 2, kh // 2, kw // 2)
    self.stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
    self.pad_t, self.pad_h, self.pad_w = (2 * padding[0], padding[1], padding[2])
    self.policy = policy
    init = _torch_uniform(cin * kt * kh * kw)
    pd = policy.param_dtype
    self.kernel = shd.param(init(rngs.params(), (kt, kh, kw, cin, cout), pd),
                            (None, None, None, "conv_in", "conv_out"))
    self.bias = shd.param(init(rngs.params(), (cout,), pd), ("conv_out",))

  def _conv(self, x, pad_t):
    """Conv over `x` with `pad_t` zero frames in front."""
    cd = self.policy.compute_dtype
    if self.kernel.shape[0] > 1 and self.stride[0] == 1 and conv3d_form() == "fold2d":
      return self._conv_fold2d(x, pad_t)
    y = jax.lax.conv_general_dilated(
        x.astype(cd), self.kernel[...].astype(cd), window_strides=self.stride,
        padding=((pad_t, 0), (self.pad_h, self.pad_h), (self.pad_w, self.pad_w)),
        dimension_numbers=_CONV3D, precision=_precision(self.policy), preferred_element_type=conv_output_dtype(cd))
    return _add_bias(y, self.bias[...], cd)

  def _conv_fold2d(self, x, pad_t):
    """The "fold2d" form: frames t..t+kt-1 side by side on the channel axis, one 2-D conv per output frame with
    the kernel `[kh, kw, kt·Cin, Cout]` (tap-major channels, as they were stacked)."""
    cd = self.policy.compute_dtype
    kt, kh, kw, cin, cout = self.kernel.shape
    x = x.astype(cd)
    if pad_t:
      x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    b, tout = x.shape[0], x.shape[1] - kt + 1
    xs = jnp.concatenate([x[:, i:i + tout] for i in range(kt)], axis=-1)
    kernel = jnp.transpose(self.kernel[...].astype(cd), (1, 2, 0, 3, 4)).reshape(kh, kw, kt * cin, cout)
    y = jax.lax.conv_general_dilated(
        xs.reshape((b * tout,) + xs.shape[2:]), kernel, window_strides=self.stride[1:],
        padding=((self.pad_h, self.pad_h), (self.pad_w, self.pad_w)), dimension_numbers=_CONV2D,
        precision=_precision(self.policy), preferred_element_type=conv_output_dtype(cd))
    y = _add_bias(y, self.bias[...], cd)
    return y.reshape((b, tout) + y.shape[1:])

  def __call__(self, x):  # [B, T, H, W, Cin] -> [B, T', H, W, Cout]
    return self._conv(x, self.pad_t)

  def step(self, x, cache):
    """Causal conv of one chunk with the previous chunk's last frames in front; returns (y, new cache).
    `cache` `[B, 2, H, W, Cin]` or None (= zeros, the first chunk)."""
    assert self.pad_t == CACHE_T, "only kernel-3 causal convs carry a cache"
    if cache is None:
      cache = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], x.dtype)
    xx = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    return self._conv(xx, 0), xx[:, -CACHE_T:]


class Conv2d(nnx.Module):
  """Per-frame 2-D conv (time folded into batch). Kernel `[kh, kw, Cin, Cout]`."""

  def __init__(self, cin, cout, kernel=3, *, stride=1, padding=((1, 1), (1, 1)), policy, rngs: nnx.Rngs):
    self.stride, self.padding, self.policy = (stride, stride), padding, policy
    init = _torch_uniform(cin * kernel * kernel)
    pd = policy.param_dtype
    self.kernel = shd.param(init(rngs.params(), (kernel, kernel, cin, cout), pd),
                            (None, None, "conv_in", "conv_out"))
    self.bias = shd.param(init(rngs.params(), (cout,), pd), ("conv_out",))

  def upsample2x(self, x):
    """`self(nearest ×2 upsample of x)` for a 3×3, stride-1, padding-1 conv, as four 2×2 convs of `x` (the
    "subpixel" form of `upsample_form`). Output pixel (2i+a, 2j+b) sees input rows i-1, i, i (a = 0) or i, i, i+1
    (a = 1), and the same for columns: per phase the 3×3 taps that land on one input pixel are summed into a 2×2
    kernel (in float32), applied with the padding that phase needs."""
    assert self.kernel.shape[:2] == (3, 3) and self.stride == (1, 1) and self.padding == ((1, 1), (1, 1))
    b, t = x.shape[:2]
    cd = self.policy.compute_dtype
    xf = x.reshape((b * t,) + x.shape[2:]).astype(cd)
    taps = jnp.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], jnp.float32)   # [phase, 2 taps, 3 taps]
    k = jnp.einsum("apy,bqx,yxio->abpqio", taps, taps, self.kernel[...].astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST).astype(cd)
    pad = ((1, 0), (0, 1))   # phase 0 reads offsets (-1, 0), phase 1 (0, +1)
    rows = []
    for a in range(2):
      cols = []
      for c in range(2):
        y = jax.lax.conv_general_dilated(
            xf, k[a, c], window_strides=(1, 1), padding=(pad[a], pad[c]), dimension_numbers=_CONV2D,
            precision=_precision(self.policy), preferred_element_type=conv_output_dtype(cd))
        cols.append(_add_bias(y, self.bias[...], cd))
      rows.append(jnp.stack(cols, axis=3))                 # [BT, H, W, 2 (column phase), Cout]
    y = jnp.stack(rows, axis=2)                            # [BT, H, 2 (row phase), W, 2, Cout]
    n, h, _, w, _, co = y.shape
    return y.reshape((b, t, 2 * h, 2 * w, co))

  def __call__(self, x):  # [B, T, H, W, Cin] -> [B, T, H', W', Cout]
    b, t = x.shape[:2]
    cd = self.policy.compute_dtype
    y = jax.lax.conv_general_dilated(
        x.reshape((b * t,) + x.shape[2:]).astype(cd), self.kernel[...].astype(cd), window_strides=self.stride,
        padding=self.padding, dimension_numbers=_CONV2D, precision=_precision(self.policy),
        preferred_element_type=conv_output_dtype(cd))
    y = _add_bias(y, self.bias[...], cd)
    return y.reshape((b, t) + y.shape[1:])


class RMSNorm(nnx.Module):
  """`F.normalize(x, dim=C) · √C · gamma` (reference `RMS_norm`, no bias): L2 normalisation over channels with
  the norm clamped at 1e-12 (not an eps inside the root). Statistics in float32."""

  def __init__(self, dim, *, policy, rngs: nnx.Rngs = None):
    self.scale = shd.param(jnp.ones((dim,), policy.param_dtype), ("norm",))
    self.dim = dim

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
    y = xf / jnp.maximum(norm, 1e-12) * (self.dim ** 0.5) * self.scale[...].astype(jnp.float32)
    return y.astype(x.dtype)


class ResidualBlock(nnx.Module):
  """`residual = [norm1, SiLU, conv1, norm2, SiLU, Dropout(0), conv2]` + `shortcut` (1×1×1 conv when
  Cin ≠ Cout, else identity). Reference Sequential indices: norm1 = residual.0, conv1 = residual.2,
  norm2 = residual.3, conv2 = residual.6."""

  def __init__(self, cin, cout, *, policy, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(cin, policy=policy)
    self.conv1 = CausalConv3d(cin, cout, 3, policy=policy, rngs=rngs)
    self.norm2 = RMSNorm(cout, policy=policy)
    self.conv2 = CausalConv3d(cout, cout, 3, policy=policy, rngs=rngs)
    self.shortcut = CausalConv3d(cin, cout, 1, policy=policy, rngs=rngs) if cin != cout else None

  def _skip(self, x):
    return x if self.shortcut is None else self.shortcut(x)

  def __call__(self, x):
    h = self.conv1(silu(self.norm1(x)))
    return self.conv2(silu(self.norm2(h))) + self._skip(x)

  def step(self, x, cache, first=False):
    c1, c2 = (None, None) if first else (cache["conv1"], cache["conv2"])
    h, c1 = self.conv1.step(silu(self.norm1(x)), c1)
    h, c2 = self.conv2.step(silu(self.norm2(h)), c2)
    return h + self._skip(x), {"conv1": c1, "conv2": c2}


class Linear1x1(nnx.Module):
  """A 1×1 Conv2d as a matmul over channels. Kernel `[Cin, Cout]` (torch `weight[:, :, 0, 0].T`)."""

  def __init__(self, cin, cout, *, policy, rngs: nnx.Rngs):
    init = _torch_uniform(cin)
    self.kernel = shd.param(init(rngs.params(), (cin, cout), policy.param_dtype), ("conv_in", "conv_out"))
    self.bias = shd.param(init(rngs.params(), (cout,), policy.param_dtype), ("conv_out",))
    self.policy = policy

  def __call__(self, x):
    cd = self.policy.compute_dtype
    y = jnp.einsum("...i,io->...o", x.astype(cd), self.kernel[...].astype(cd), precision=_precision(self.policy),
                   preferred_element_type=conv_output_dtype(cd))
    return _add_bias(y, self.bias[...], cd)


class AttentionBlock(nnx.Module):
  """Single-head self-attention over the H·W pixels of each frame, plus the identity. `to_qkv` output channels
  are [q | k | v]. Acts per frame, so chunking never changes it."""

  def __init__(self, dim, *, policy, rngs: nnx.Rngs):
    self.norm = RMSNorm(dim, policy=policy)
    self.to_qkv = Linear1x1(dim, 3 * dim, policy=policy, rngs=rngs)
    self.proj = Linear1x1(dim, dim, policy=policy, rngs=rngs)

  def __call__(self, x):  # [B, T, H, W, C]
    b, t, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 3, 1, c)   # [BT, HW, 3, N=1, C]
    # Single head with K = C (384 for wan21): the "xla" path; flash kernels cap the head dim.
    with jax.default_matmul_precision("highest" if x.dtype == jnp.float32 else "default"):
      o = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], impl="xla")
    return self.proj(o.reshape(b, t, h, w, c)) + x

  def step(self, x, cache, first=False):
    return self(x), None


class Resample(nnx.Module):
  """Spatial ×2 down/up-sampling, optionally with the causal temporal ×2 (spec §4.2, pitfall 11).

  - downsample2d: zero-pad right/bottom by 1, Conv2d(C, C, 3, stride 2) (`conv` = reference `resample.1`).
  - downsample3d: the same, then `time_conv` (kernel (3,1,1), stride 2, no padding) on frames 1… with frame 0
    kept as is: input 1+2n frames -> 1+n.
  - upsample2d: nearest ×2 in H and W, Conv2d(C, C/2, 3, padding 1).
  - upsample3d: `time_conv` (C -> 2C, kernel (3,1,1), causal) on frames 1… only, its channels [0:C] / [C:2C]
    interleaved as even / odd frames, frame 0 kept as is: t frames -> 1+2(t-1); then the upsample2d path.
  """

  MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

  def __init__(self, dim, mode, *, policy, rngs: nnx.Rngs):
    assert mode in self.MODES, mode
    self.mode = mode
    if mode.startswith("down"):
      self.conv = Conv2d(dim, dim, 3, stride=2, padding=((0, 1), (0, 1)), policy=policy, rngs=rngs)
    else:
      self.conv = Conv2d(dim, dim // 2, 3, policy=policy, rngs=rngs)
    if mode == "downsample3d":
      self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0), policy=policy,
                                    rngs=rngs)
    elif mode == "upsample3d":
      self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), policy=policy, rngs=rngs)
    else:
      self.time_conv = None

  @staticmethod
  def _interleave(y):  # [B, t, H, W, 2C] -> [B, 2t, H, W, C]: channels [0:C] -> frame 2j, [C:2C] -> 2j+1
    b, t, h, w, c2 = y.shape
    y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
    return y.reshape(b, 2 * t, h, w, c2 // 2)

  def _spatial(self, x):
    if self.mode.startswith("up"):
      if upsample_form() == "subpixel":
        return self.conv.upsample2x(x)
      # nearest-exact ×2 is a plain pixel repeat.
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    return self.conv(x)

  def __call__(self, x):
    if self.mode == "upsample3d" and x.shape[1] > 1:
      rest = self._interleave(self.time_conv(x[:, 1:]))
      x = jnp.concatenate([x[:, :1], rest.astype(x.dtype)], axis=1)
    x = self._spatial(x)
    if self.mode == "downsample3d" and x.shape[1] > 1:
      # Windows (0,1,2), (2,3,4), ...: frame 0 also feeds the first window.
      x = jnp.concatenate([x[:, :1], self.time_conv(x)], axis=1)
    return x

  def step(self, x, cache, first=False):
    if self.mode == "upsample3d":
      if first:
        # Quirk: the first chunk skips the time conv (reference cache marker "Rep"); the next chunk sees plain
        # zero padding, i.e. a zero cache.
        cache = jnp.zeros(x.shape[:1] + (CACHE_T,) + x.shape[2:], x.dtype)
      else:
        y, cache = self.time_conv.step(x, cache)
        x = self._interleave(y)
      return self._spatial(x), cache
    x = self._spatial(x)
    if self.mode == "downsample3d":
      # The cache is the chunk's last frame; the first chunk passes through without the time conv.
      last = x[:, -1:]
      if not first:
        x = self.time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1))
      cache = last
    return x, cache
