"""Small shared layers: Dense with logical axes, fp32 LayerNorm/RMSNorm helpers.

Every model family (DiT, umT5, VAE, CLIP) builds on these so that parameter names (`kernel`, `bias`, `scale`),
logical axes and precision handling are the same everywhere. Kernels are `[in, out]` (torch `Linear.weight.T`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from wanjax import sharding as shd


class Dense(nnx.Module):
  """y = x @ kernel + bias, with the matmul in `compute_dtype` (inputs and kernel cast) and the result in
  `out_dtype` (default: compute_dtype). Parameters stay in `param_dtype`. An optional `kernel_scale` param,
  added by `wanjax.quant.quantize_model`, marks an int8/fp8 kernel that is dequantised inside the matmul."""

  KERNEL_CAST_AT_USE = True   # the kernel is only read as `kernel.astype(compute_dtype)` (`cast_kernels`)

  def __init__(self, din, dout, *, axes=("embed", "mlp"), use_bias=True, compute_dtype=jnp.float32,
               param_dtype=jnp.float32, out_dtype=None, kernel_init=None, bias_init=None, rngs: nnx.Rngs):
    kernel_init = kernel_init or nnx.initializers.xavier_uniform()
    self.kernel = shd.param(kernel_init(rngs.params(), (din, dout), param_dtype), axes)
    if use_bias:
      bias_init = bias_init or nnx.initializers.zeros
      self.bias = shd.param(bias_init(rngs.params(), (dout,), param_dtype), (axes[1],))
    else:
      self.bias = None
    self.compute_dtype = compute_dtype
    self.out_dtype = out_dtype

  def __call__(self, x):
    cd = self.compute_dtype
    y = jnp.einsum("...i,io->...o", x.astype(cd), self.kernel[...].astype(cd),
                   preferred_element_type=matmul_output_dtype(cd, self.out_dtype))
    # Weight-only quantisation (`wanjax.quant`): an int8/fp8 kernel carries a per-output-channel
    # `kernel_scale [1, out]`; int8/fp8 values are exact in bf16/fp32, so dequantising after the matmul is
    # the same as multiplying by the dequantised kernel.
    kernel_scale = getattr(self, "kernel_scale", None)
    if kernel_scale is not None:
      y = y * kernel_scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y.astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(self.out_dtype or cd)


def cast_at_use_kernels(model):
  """(module path, module) of every layer whose float32 kernel is read only as `kernel.astype(compute_dtype)` with
  a half-precision compute dtype (`KERNEL_CAST_AT_USE`, not quantised): the kernels that may be stored in that
  dtype without changing a single output. Works on abstract models (`nnx.eval_shape`)."""
  for path, m in nnx.iter_modules(model):
    if not getattr(m, "KERNEL_CAST_AT_USE", False) or getattr(m, "kernel_scale", None) is not None:
      continue
    if jnp.dtype(m.compute_dtype).itemsize < 4 and jnp.dtype(m.kernel.dtype) == jnp.dtype(jnp.float32):
      yield path, m


def cast_kernels(model) -> int:
  """Stores, in place, every half-precision matmul's float32 kernel in its compute dtype; returns the bytes saved.

  For inference under the `bf16` policy (float32 master weights, bf16 matmuls): those kernels are read only as
  `kernel.astype(compute_dtype)` (`cast_at_use_kernels`), so storing the cast once gives bit-identical outputs,
  halves their memory, and saves the program one float32 read and one bf16 write of every kernel per call (the
  1.3B DiT: 8.4 GB of memory traffic per forward, each Self-Forcing DiT call included). Float32-path layers (time
  MLP, modulation, head), biases, norms and quantised kernels (`kernel_scale`) are left as they are. Not for
  training (the optimiser updates the float32 masters; a frozen DMD teacher may: `dmd.teacher_param_dtype`) nor
  before merging LoRAs into the kernels (`adapt_dit` casts after merging). Keeps each kernel's sharding and its
  Param metadata. Works inside `jax.jit` too (a model built there, e.g. random benchmark weights, is then never
  held in float32)."""
  saved = 0
  for _, m in list(cast_at_use_kernels(model)):
    cd = jnp.dtype(m.compute_dtype)
    kernel = m.kernel[...]
    m.kernel = m.kernel.replace(kernel.astype(cd))   # an elementwise op: a sharded kernel keeps its sharding
    saved += kernel.size * (4 - cd.itemsize)
  return saved


def matmul_output_dtype(compute_dtype, out_dtype=None):
  """The dtype a `Dense` matmul writes: float32 where the layer computes or returns float32, else the half-precision
  compute dtype itself (the accumulation inside the matmul is float32 either way).

  Decision (docs/decisions.md, "bf16 matmul outputs"): torch's bf16 `Linear` rounds the float32 accumulator plus
  bias to bf16 once, inside the GEMM epilogue. Here a half-precision matmul returns its rounded product and the
  bias (and an int8/fp8 `kernel_scale`) is applied in float32 and rounded again, one extra rounding (relative
  output change ~4e-4 on a 1.3B block, a tenth of a bf16 ulp), because writing the float32 product and reading it
  back cost ~1.4 ms of the 18.4 ms 1.3B block on an H100 (`benchmarks/dit_block_variants.py`: "current" against
  "bf16_dots")."""
  od = out_dtype or compute_dtype
  if jnp.dtype(compute_dtype) == jnp.dtype(jnp.float32) or jnp.dtype(od) != jnp.dtype(compute_dtype):
    return jnp.float32
  return compute_dtype


def layer_norm(x, scale=None, bias=None, eps=1e-6):
  """LayerNorm with fp32 statistics (biased variance, eps inside the sqrt); output float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  y = (x - mean) * jax.lax.rsqrt(var + eps)
  if scale is not None:
    y = y * scale.astype(jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y


class LayerNorm(nnx.Module):
  """Affine (or not) LayerNorm over the last axis, fp32 statistics; returns float32."""

  def __init__(self, dim, *, eps=1e-6, affine=True, param_dtype=jnp.float32, axes=("norm",),
               rngs: nnx.Rngs = None):
    self.eps = eps
    if affine:
      self.scale = shd.param(jnp.ones((dim,), param_dtype), axes)
      self.bias = shd.param(jnp.zeros((dim,), param_dtype), axes)
    else:
      self.scale = self.bias = None

  def __call__(self, x):
    return layer_norm(x, None if self.scale is None else self.scale[...],
                      None if self.bias is None else self.bias[...], self.eps)
