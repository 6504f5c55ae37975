"""Fused projections: several `wanjax.nn.Dense` layers that read the same input as ONE matmul.

`fused_dense(x, (attn.q, attn.k, attn.v))` concatenates the stored kernels `[D, D]` x3 into `[D, 3D]` at run
time (the checkpoint keeps its separate `self_attn.{q,k,v}` names), does one `x @ W` and splits the result, so
each output is exactly what the separate `Dense` calls compute (same compute dtype, float32 accumulation, the
same per-output-channel `kernel_scale` for int8/fp8 kernels, bias added in float32).

Why this is an option and not the default (numbers in docs/scaling.md §4): at Wan's sequence lengths each
q/k/v matmul is compute-bound (arithmetic intensity ~2,000 FLOP/byte at 32,760 tokens, D = 5120, against a
machine balance of ~250-300 FLOP/byte on H100 / v5e / v6e), so the input re-reads a fusion saves (2·L·D bytes
per layer) hide under the matmul, while the run-time concatenation writes and re-reads 3·D² weight bytes.
It pays off only for short inputs (L below a few hundred tokens), which Wan does not have.
"""

import jax.numpy as jnp

from wanjax.nn import matmul_output_dtype


def fused_dense(x, denses):
  """x `[..., Din]`; denses: `Dense` modules with the same input width, compute and output dtype ->
  tuple of their outputs `[..., Dout_i]`."""
  first = denses[0]
  cd, od = first.compute_dtype, first.out_dtype or first.compute_dtype
  for d in denses:
    if d.kernel.shape[0] != first.kernel.shape[0] or d.compute_dtype != cd or (d.out_dtype or d.compute_dtype) != od:
      raise ValueError("fused_dense needs Dense layers with one input width, compute dtype and output dtype")
  widths = [d.kernel.shape[1] for d in denses]
  kernel = jnp.concatenate([d.kernel[...].astype(cd) for d in denses], axis=1)            # [Din, sum Dout]
  y = jnp.einsum("...i,io->...o", x.astype(cd), kernel, preferred_element_type=matmul_output_dtype(cd, od))
  y = y.astype(jnp.float32)
  scales = [getattr(d, "kernel_scale", None) for d in denses]
  if any(s is not None for s in scales):
    y = y * jnp.concatenate([jnp.ones((1, w), jnp.float32) if s is None else s[...].astype(jnp.float32)
                             for s, w in zip(scales, widths)], axis=1)
  if any(d.bias is not None for d in denses):
    y = y + jnp.concatenate([jnp.zeros((w,), jnp.float32) if d.bias is None else d.bias[...].astype(jnp.float32)
                             for d, w in zip(denses, widths)])
  outs, start = [], 0
  for w in widths:
    outs.append(y[..., start:start + w].astype(od))
    start += w
  return tuple(outs)
