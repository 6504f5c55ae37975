"""Weight-only int8 / fp8-e4m3 quantisation of the DiT block matmuls, dequantised inside the matmul.

Mirrors LightX2V's converter (`tools/convert/quant/quant.py`) and its weight side at runtime
(`lightx2v/common/ops/mm/mm_weight.py`; spec `distillation.md` §5.4, `wan_model.md` §2.4): symmetric, per
output channel, `scale[o] = max(max_i |W[i, o]|, 1e-5) / qmax` with qmax 127 (int8) or 448 (fp8 e4m3).
Only the Linear layers inside the blocks' `self_attn`, `cross_attn` and `ffn` are quantised; biases, norms,
modulation, embeddings, time projection, head and img_emb keep their dtype.

Unlike LightX2V, activations are not quantised: the matmul runs in the compute dtype on the exactly-upcast
int8/fp8 kernel and the per-channel scale multiplies the float32 result (`qmatmul`). This halves (bf16) or
quarters (fp32) the weight memory without per-token activation error.

Integration: `wanjax.nn.Dense` dequantises when it has a `kernel_scale` param. `quantize_model` turns the
selected Dense layers of a model (concrete or inside `nnx.eval_shape`) into that form; converted LightX2V
files kept quantised (`<…>.kernel` int8/fp8 `[in, out]` + `<…>.kernel_scale` f32 `[1, out]`) load into
`nnx.eval_shape(lambda: quantize_model(WanDiT(...), mode))` with `checkpoint.load_state`.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from wanjax.errors import UsageError

MODES = ("int8", "fp8")
QMAX = {"int8": 127.0, "fp8": 448.0}
QDTYPE = {"int8": jnp.int8, "fp8": jnp.float8_e4m3fn}
SCALE_FLOOR = 1e-5   # LightX2V clamps the channel absmax so an all-zero channel does not divide by zero
# Matmul families LightX2V quantises (key component 2 of `blocks.N.<family>...`).
BLOCK_MATMULS = ("self_attn", "cross_attn", "ffn")


_ALIASES = {"float8_e4m3fn": "fp8", "fp8_e4m3": "fp8"}   # the converter's config.json spelling


def check_mode(mode):
  """Returns the canonical mode name ('int8' | 'fp8'); 'float8_e4m3fn' is accepted for fp8."""
  mode = _ALIASES.get(mode, mode)
  if mode not in MODES:
    raise UsageError(f"unknown quantisation mode {mode!r}; valid: {', '.join(MODES)} (or float8_e4m3fn)")
  return mode


def _quantize(kernel, mode):
  """Per-output-channel absmax quantisation over the `in` axis (-2): kernel [..., in, out]."""
  w = jnp.asarray(kernel).astype(jnp.float32)
  absmax = jnp.max(jnp.abs(w), axis=-2, keepdims=True)               # [..., 1, out]
  scale = jnp.maximum(absmax, SCALE_FLOOR) / QMAX[mode]
  y = w / scale
  if mode == "int8":
    q = jnp.clip(jnp.round(y), -128, 127).astype(jnp.int8)
  else:
    # The cast rounds to nearest-even; the clip keeps values that round up past 448 from turning into NaN.
    q = jnp.clip(y, -448.0, 448.0).astype(jnp.float8_e4m3fn)
  return q, scale


def quantize_int8(kernel):
  """kernel [..., in, out] -> (q int8 [..., in, out], scale f32 [..., 1, out]), scale = absmax/127."""
  return _quantize(kernel, "int8")


def quantize_fp8(kernel):
  """kernel [..., in, out] -> (q float8_e4m3fn [..., in, out], scale f32 [..., 1, out]), scale = absmax/448."""
  return _quantize(kernel, "fp8")


def quantize(kernel, mode):
  return _quantize(kernel, check_mode(mode))


def dequantize(q, scale, dtype=jnp.float32):
  """W = q · scale (per output channel)."""
  return (q.astype(jnp.float32) * scale.astype(jnp.float32)).astype(dtype)


def qmatmul(x, q, scale, compute_dtype=jnp.bfloat16):
  """(x @ q) · scale with float32 accumulation: x [..., in], q [in, out] int8/fp8, scale [1, out] -> f32."""
  y = jnp.einsum("...i,io->...o", x.astype(compute_dtype), q.astype(compute_dtype),
                 preferred_element_type=jnp.float32)
  return y * scale.astype(jnp.float32)


def is_block_matmul(path) -> bool:
  """Default predicate: Dense layers under `blocks.{self_attn,cross_attn,ffn}` (what LightX2V quantises)."""
  path = tuple(str(p) for p in path)
  return len(path) >= 3 and path[0] == "blocks" and path[1] in BLOCK_MATMULS


def _is_dense(module) -> bool:
  from wanjax.nn import Dense  # local: nn imports nothing from here, but keep the dependency one-way
  return isinstance(module, Dense)


def quantize_model(model, mode, predicate=is_block_matmul):
  """Quantises, in place, the kernels of the `wanjax.nn.Dense` layers whose module path satisfies `predicate`
  and gives each a `kernel_scale` param; returns `model`. Works inside `nnx.eval_shape` (abstract models for
  loading quantised files) and on sharded models (the int8/fp8 kernel keeps the kernel's sharding)."""
  mode = check_mode(mode)
  targets = [(path, m) for path, m in nnx.iter_modules(model) if _is_dense(m) and predicate(path)]
  if not targets:
    raise UsageError(f"quantize_model({mode!r}): no Dense layer matches the predicate; nothing to quantise")
  for path, m in targets:
    if getattr(m, "kernel_scale", None) is not None:
      raise UsageError(f"{'.'.join(map(str, path))}: kernel is already quantised")
    var = m.kernel
    kernel = var[...]
    meta = dict(var.get_metadata())
    axes = tuple(meta.pop("axes", ()))
    sharding = None if isinstance(kernel, jax.core.Tracer) else getattr(kernel, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      q, scale = jax.jit(lambda k: _quantize(k, mode), out_shardings=(sharding, None))(kernel)
    else:
      q, scale = _quantize(kernel, mode)
    m.kernel = var.replace(q)
    # The size-1 axis of the scale is not sharded (None); the output axis follows the kernel's.
    scale_axes = (None, axes[-1]) if axes else ()
    m.kernel_scale = nnx.Param(scale, axes=scale_axes) if axes else nnx.Param(scale)
  return model


def quantized_paths(state) -> list:
  """Dotted module paths of the quantised Dense layers in an nnx.State (those with a `kernel_scale`)."""
  out = []
  for path, _ in nnx.to_flat_state(state):
    if str(path[-1]) == "kernel_scale":
      out.append(".".join(str(p) for p in path[:-1]))
  return sorted(out)


def file_mode(dtypes) -> str | None:
  """Quantisation mode of a converted file from its kernel dtypes (iterable of numpy dtypes), or None."""
  found = set()
  for dt in dtypes:
    dt = np.dtype(dt)
    if dt == np.int8:
      found.add("int8")
    elif dt == np.dtype(ml_dtypes.float8_e4m3fn):
      found.add("fp8")
  if len(found) > 1:
    raise UsageError(f"checkpoint mixes quantisation modes {sorted(found)}; expected one")
  return found.pop() if found else None


_BYTES = {"float32": 4, "bf16": 2}


def weight_memory(cfg, mode="bf16", *, rest="bf16", model_fn=None) -> dict:
  """Weight bytes of the DiT `cfg` (from `jax.eval_shape`, nothing allocated).

  mode: 'float32' | 'bf16' (every parameter in that dtype) or 'int8' | 'fp8' (block matmul kernels
  quantised, 1 byte + a float32 scale per output channel; every other parameter in `rest`).
  Returns {'total': bytes, 'quantized': bytes of q kernels + scales, 'other': bytes of the rest, 'params': n}.
  """
  mode = mode if mode in _BYTES else _ALIASES.get(mode, mode)
  if mode not in _BYTES and mode not in MODES:
    raise UsageError(f"unknown weight mode {mode!r}; valid: float32, bf16, int8, fp8")
  if rest not in _BYTES:
    raise UsageError(f"unknown dtype for unquantised weights {rest!r}; valid: float32, bf16")
  if model_fn is None:
    from wanjax.dit.model import WanDiT
    model_fn = lambda: WanDiT(cfg, rngs=nnx.Rngs(0))  # noqa: E731
  build = model_fn if mode in _BYTES else (lambda: quantize_model(model_fn(), mode))
  state = nnx.state(nnx.eval_shape(build), nnx.Param)
  other_size = _BYTES[mode] if mode in _BYTES else _BYTES[rest]
  quantized = other = params = 0
  for path, var in nnx.to_flat_state(state):
    v = var.get_value()
    n = int(np.prod(v.shape, dtype=np.int64))
    dt = np.dtype(v.dtype)
    if dt == np.int8 or dt == np.dtype(ml_dtypes.float8_e4m3fn):
      quantized += n
      params += n
    elif str(path[-1]) == "kernel_scale":
      quantized += 4 * n
    else:
      other += other_size * n
      params += n
  return {"total": quantized + other, "quantized": quantized, "other": other, "params": params}
