"""DiT building blocks: patchify, timestep sinusoid, embedding MLPs, qk RMSNorm, modulation, head.

Mirrors the non-attention parts of the reference `wan/modules/model.py` (`sinusoidal_embedding_1d`,
`WanRMSNorm`, `MLPProj`, `Head`, the `patch_embedding` / `text_embedding` / `time_embedding` /
`time_projection` submodules and `unpatchify`); spec `wan_model.md` §1.3–1.6, §1.10–1.12, §1.15.

Shapes: B batch, F/H/W latent frames/height/width, C channels, L video tokens, S text tokens, D model width,
G modulation groups (1 for a per-sample timestep, F for per-frame timesteps).
"""

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax import sharding as shd
from wanjax.dit import rope
from wanjax.nn import Dense, LayerNorm, layer_norm

F32 = jnp.float32


# ----------------------------------------------------------------------------------------------- patchify


def patchify(x, patch):
  """`[B, F, H, W, C]` -> tokens `[B, L, pt·ph·pw·C]` (patch vector ordered (kt, kh, kw, c)), grid (F', H', W')."""
  b, f, h, w, c = x.shape
  pt, ph, pw = patch
  g = (f // pt, h // ph, w // pw)
  x = x.reshape(b, g[0], pt, g[1], ph, g[2], pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, g[0] * g[1] * g[2], pt * ph * pw * c), g


def unpatchify(tokens, grid, patch):
  """Tokens `[B, L, pt·ph·pw·C]` (channel index ((kt·ph + kh)·pw + kw)·C + c) -> `[B, F, H, W, C]`."""
  b = tokens.shape[0]
  pt, ph, pw = patch
  nf, nh, nw = grid
  c = tokens.shape[-1] // (pt * ph * pw)
  x = tokens.reshape(b, nf, nh, nw, pt, ph, pw, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, nf * pt, nh * ph, nw * pw, c)


class PatchEmbed(nnx.Module):
  """The reference `Conv3d(in_dim, D, kernel=stride=patch)` as reshape + matmul; kernel `[pt, ph, pw, C, D]` is
  the torch weight transposed (2, 3, 4, 1, 0)."""

  KERNEL_CAST_AT_USE = True   # read only as `kernel.astype(compute_dtype)` (`wanjax.nn.cast_kernels`)

  def __init__(self, in_dim, dim, patch, *, policy, rngs: nnx.Rngs):
    self.patch = tuple(patch)
    pt, ph, pw = self.patch
    # xavier_uniform on the weight flattened to [D, C·pt·ph·pw] (spec §1.15).
    fan_in, fan_out = in_dim * pt * ph * pw, dim
    lim = float(np.sqrt(6.0 / (fan_in + fan_out)))
    k = jax.random.uniform(rngs.params(), (pt, ph, pw, in_dim, dim), policy.param_dtype, -lim, lim)
    self.kernel = shd.param(k, ("conv_in", "conv_in", "conv_in", "conv_in", "embed"))
    self.bias = shd.param(jnp.zeros((dim,), policy.param_dtype), ("embed",))
    self.compute_dtype = policy.compute_dtype

  def __call__(self, x):
    """x `[B, F, H, W, C]` -> (tokens `[B, L, D]` in the compute dtype (bf16 under autocast, §1.12), grid)."""
    tokens, grid = patchify(x, self.patch)
    k = self.kernel[...]
    cd = self.compute_dtype
    y = jnp.einsum("BLP,PD->BLD", tokens.astype(cd), k.reshape(-1, k.shape[-1]).astype(cd),
                   preferred_element_type=F32)
    return (y + self.bias[...].astype(F32)).astype(cd), grid


# ----------------------------------------------------------------------------------------------- time


def sinusoid(t, dim):
  """Timestep embedding `[cos(t·ω) | sin(t·ω)]`, ω_j = 10000^(-j/(dim/2)); `t [...]` -> float32 `[..., dim]`.

  The reference evaluates it in float64 (§1.5); `rope.cos_sin` reproduces that to ~4e-7 in float32.
  (diffusers computes t·ω in float32, which is ~1e-4 off at t ≈ 1000.)
  """
  half = dim // 2
  omega = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)
  c, s = rope.cos_sin(t, omega)
  return jnp.concatenate([c, s], axis=-1)


_ACTS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


FFN_GELU_FORMS = ("float32", "bf16_formula")
_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


def ffn_gelu_form():
  """How a half-precision MLP with the tanh GELU computes fc1's bias and the GELU: "float32" (bias added and GELU
  evaluated in float32, rounded once, as torch does for a bf16 tensor; the default) or "bf16_formula" (bias added
  in the compute dtype and the GELU spelled out there, `x·0.5·(1 + tanh(√(2/π)·(x + 0.044715·x·x·x)))`: the exact
  pattern XLA's GPU GEMM rewriter folds into a cuBLASLt BIAS_GELU epilogue, which computes in float32 and rounds
  once, when `--xla_gpu_enable_cublaslt=true`; elsewhere it is bf16 arithmetic). A module-level name read at trace
  time, patched by `benchmarks/dit_forward.py --ffn-gelu`; docs/decisions.md "FFN GELU form"."""
  return "float32"


def gelu_tanh_formula(x):
  """tanh GELU in x's dtype, spelled as XLA's GEMM rewriter matches it (a plain cube, constants on the left)."""
  return x * (0.5 * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x)))))


class MLP(nnx.Module):
  """fc1 -> activation -> fc2 (reference `nn.Sequential(Linear, act, Linear)` as `.0` / `.2`).

  Matmuls run in `compute_dtype` with outputs in that dtype; the activation is evaluated in float32 and rounded
  back, as torch does for a bf16 tensor (the tanh GELU has an opt-in all-bf16 form, `ffn_gelu_form`).
  """

  def __init__(self, din, dhidden, dout, *, act, compute_dtype, param_dtype, axes1=("embed", "mlp"),
               axes2=("mlp", "embed"), init1=None, init2=None, tag=None, rngs: nnx.Rngs):
    self.fc1 = Dense(din, dhidden, axes=axes1, compute_dtype=compute_dtype, param_dtype=param_dtype,
                     kernel_init=init1, rngs=rngs)
    self.fc2 = Dense(dhidden, dout, axes=axes2, compute_dtype=compute_dtype, param_dtype=param_dtype,
                     kernel_init=init2, rngs=rngs)
    self.act = act
    self.tag = tag

  def _fc1_bias_gelu_bf16(self, x):
    """fc1 + bias + tanh GELU all in the half-precision compute dtype (the "bf16_formula" form)."""
    cd = self.fc1.compute_dtype
    y = jnp.einsum("...i,io->...o", x.astype(cd), self.fc1.kernel[...].astype(cd), preferred_element_type=cd)
    return gelu_tanh_formula(y + self.fc1.bias[...].astype(cd))

  def __call__(self, x):
    fc1 = self.fc1
    if (self.act == "gelu_tanh" and ffn_gelu_form() == "bf16_formula" and fc1.bias is not None
        and jnp.dtype(fc1.compute_dtype) != jnp.dtype(F32) and fc1.out_dtype is None
        and getattr(fc1, "kernel_scale", None) is None):
      h = self._fc1_bias_gelu_bf16(x)
    else:
      h = fc1(x)
      h = _ACTS[self.act](h.astype(F32)).astype(h.dtype)
    if self.tag:
      h = checkpoint_name(h, self.tag)
    return self.fc2(h)


class TimeProjection(nnx.Module):
  """`e0 = Linear(SiLU(e))` reshaped `[..., 6, D]` (reference `time_projection`; fp32, §1.5)."""

  def __init__(self, dim, *, param_dtype, rngs: nnx.Rngs):
    self.fc = Dense(dim, 6 * dim, axes=("embed", "mlp"), compute_dtype=F32, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, e):
    y = self.fc(jax.nn.silu(e.astype(F32)))
    return y.reshape(y.shape[:-1] + (6, y.shape[-1] // 6))


class ImageEmbedding(nnx.Module):
  """Reference `MLPProj`: LayerNorm(eps 1e-5) -> Linear -> exact GELU -> Linear -> LayerNorm(eps 1e-5); FLF2V adds
  the learned `emb_pos` `[1, 514, image_dim]` first (§1.10). Output float32 `[B, n_img, D]`."""

  def __init__(self, image_dim, dim, *, num_tokens, with_pos, policy, rngs: nnx.Rngs):
    pd = policy.param_dtype
    self.norm1 = LayerNorm(image_dim, eps=1e-5, param_dtype=pd)
    self.fc1 = Dense(image_dim, image_dim, axes=("embed", "mlp"), compute_dtype=policy.compute_dtype,
                     param_dtype=pd, rngs=rngs)
    self.fc2 = Dense(image_dim, dim, axes=("mlp", "embed"), compute_dtype=policy.compute_dtype, param_dtype=pd,
                     rngs=rngs)
    self.norm2 = LayerNorm(dim, eps=1e-5, param_dtype=pd)
    self.emb_pos = (shd.param(jnp.zeros((1, num_tokens, image_dim), pd), ("norm", "norm", "embed"))
                    if with_pos else None)

  def __call__(self, clip_fea):
    x = clip_fea.astype(F32)
    if self.emb_pos is not None:
      x = x + self.emb_pos[...].astype(F32)
    h = self.fc1(self.norm1(x))
    h = jax.nn.gelu(h.astype(F32), approximate=False).astype(h.dtype)
    return self.norm2(self.fc2(h))


# ----------------------------------------------------------------------------------------------- norms


class RMSNorm(nnx.Module):
  """Reference `WanRMSNorm` over the full last axis (across heads): statistics in float32, normalised value
  rounded to the input dtype, then × the float32 weight -> float32 (§1.8)."""

  def __init__(self, dim, *, eps=1e-6, param_dtype=F32):
    self.eps = eps
    self.scale = shd.param(jnp.ones((dim,), param_dtype), ("norm",))

  def __call__(self, x):
    xf = x.astype(F32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype).astype(F32) * self.scale[...].astype(F32)


def norm_no_affine(x, eps):
  """Non-affine LayerNorm, float32 statistics, cast back to the input dtype (reference `norm1`/`norm2`)."""
  return layer_norm(x, eps=eps).astype(x.dtype)


# ----------------------------------------------------------------------------------------------- modulation


def _grouped(x, g):
  """`[B, L, D]` -> `[B, G, L/G, D]` so per-group (per-frame) vectors `[B, G, D]` broadcast over their tokens."""
  b, l, d = x.shape
  if l % g:
    raise ValueError(f"{l} tokens cannot be split into {g} frame groups")
  return x.reshape(b, g, l // g, d)


def modulate(x, shift, scale):
  """`x · (1 + scale) + shift` in float32; x `[B, L, D]`, shift/scale `[B, G, D]` (G = 1 or frames)."""
  g = shift.shape[1]
  if g == 1:
    return x.astype(F32) * (1.0 + scale) + shift
  y = _grouped(x.astype(F32), g) * (1.0 + scale[:, :, None]) + shift[:, :, None]
  return y.reshape(x.shape)


def gated_residual(x, y, gate):
  """`x + y · gate` in float32 (the residual stream becomes float32, §1.7); gate `[B, G, D]`."""
  g = gate.shape[1]
  if g == 1:
    return x.astype(F32) + y.astype(F32) * gate
  y = (_grouped(y.astype(F32), g) * gate[:, :, None]).reshape(y.shape)
  return x.astype(F32) + y


class Head(nnx.Module):
  """Reference `Head`: `head(norm(x) · (1 + scale) + shift)` with (shift, scale) = modulation + e, where e is the
  time-embedding output (no SiLU, no projection); all float32 (§1.11). `head` is zero-initialised."""

  def __init__(self, dim, out_features, *, eps, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.modulation = shd.param(jax.random.normal(rngs.params(), (1, 2, dim), param_dtype) / np.sqrt(dim),
                                ("norm", "norm", "embed"))
    self.head = Dense(dim, out_features, axes=("embed", "kv"), compute_dtype=F32, param_dtype=param_dtype,
                      kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, x, e):
    """x `[B, L, D]`, e `[B, G, D]` -> `[B, L, out_features]` float32."""
    m = self.modulation[...].astype(F32)[None] + e.astype(F32)[:, :, None, :]    # [B, G, 2, D]
    h = modulate(layer_norm(x, eps=self.eps), m[:, :, 0], m[:, :, 1])
    return self.head(h).astype(F32)
