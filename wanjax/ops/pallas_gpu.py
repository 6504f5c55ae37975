"""JAX's Pallas Mosaic-GPU flash-attention kernel for Hopper, usable at Wan's sequence lengths (opt-in).

`jax.experimental.pallas.ops.gpu.attention_mgpu` (warpgroup MMA, TMA pipelining; sm90) has no softmax scale, no
mask, stages its inputs as float16 (jax 0.11), and only takes key counts that are a multiple of its key block and
query counts that are a multiple of twice its query block. Wan's 32,760 tokens (2^3 * 4095) are neither, so
`split_tail_attention` runs the kernel over the first `block_kv * floor(S / block_kv)` keys (queries zero-padded,
their rows dropped), attends to the remaining < block_kv keys with a float32 softmax, and merges the two parts by
their log-sum-exps (the kernel returns its own, in base 2).

Numerics: bf16 values in float16's normal range convert exactly; q is scaled by 1/sqrt(K) in float32 and rounded
to float16 (finer than bf16); the kernel accumulates in float32 and rounds the probabilities to float16 for the PV
product (finer than the bf16 a bf16 flash kernel uses). Values beyond float16's range (|x| >= 65520) would become
inf: Wan's q/k are RMS-normalised and v is a projection of a LayerNorm output, far inside it.

Inference only (the wrapper asks the kernel for its log-sum-exp, which its custom VJP does not differentiate);
used where asked for with `attention(..., impl="pallas_gpu")`, never by "auto": `benchmarks/attention_mgpu.py`
and `benchmarks/dit_forward.py --attn pallas_gpu` decide whether it should be.
"""

import math

import jax.numpy as jnp

from wanjax.errors import UsageError

BLOCK_Q = 64
BLOCK_KV = 128
STEPS = 2


def split_tail_attention(q, k, v, *, main, block_kv, q_multiple, scale=None):
  """Softmax attention of q `[B, L, N, K]` over k/v `[B, S, N, K]` (no mask) with a kernel `main` that only
  takes key counts in multiples of `block_kv` and query counts in multiples of `q_multiple`.

  `main(q, k, v) -> (out [B, Lp, N, K], lse [B, N, Lp] natural log)` gets the queries already scaled, zero-padded
  to Lp, and the first `block_kv * floor(S / block_kv)` keys; the remaining keys are attended with a float32
  softmax and both parts are combined with weights exp(lse_part - lse_all). Returns `[B, L, N, K]` in q's dtype."""
  L, S, kd = q.shape[1], k.shape[1], q.shape[-1]
  scale = 1.0 / math.sqrt(kd) if scale is None else scale
  qs = (q.astype(jnp.float32) * scale).astype(q.dtype)
  s_main = (S // block_kv) * block_kv
  parts = []
  if s_main:
    lp = -(-L // q_multiple) * q_multiple
    qp = jnp.pad(qs, ((0, 0), (0, lp - L), (0, 0), (0, 0))) if lp != L else qs
    out_m, lse_m = main(qp, k[:, :s_main], v[:, :s_main])
    parts.append((out_m[:, :L].astype(jnp.float32), lse_m[:, :, :L]))
  if s_main < S:
    out_t, lse_t = softmax_with_lse(qs, k[:, s_main:], v[:, s_main:])
    parts.append((out_t, lse_t))
  if len(parts) == 1:
    return parts[0][0].astype(q.dtype)
  (o1, l1), (o2, l2) = parts
  lse = jnp.logaddexp(l1, l2)
  w1 = jnp.exp(l1 - lse).transpose(0, 2, 1)[..., None]
  w2 = jnp.exp(l2 - lse).transpose(0, 2, 1)[..., None]
  return (o1 * w1 + o2 * w2).astype(q.dtype)


def softmax_with_lse(q, k, v):
  """Unscaled softmax attention in float32 and its natural-log log-sum-exp: (out `[B, L, N, K]` float32,
  lse `[B, N, L]`)."""
  logits = jnp.einsum("BLNK,BSNK->BNLS", q, k, preferred_element_type=jnp.float32)
  m = logits.max(axis=-1, keepdims=True)
  p = jnp.exp(logits - m)
  den = p.sum(axis=-1)
  out = jnp.einsum("BNLS,BSNK->BLNK", p, v.astype(jnp.float32)) / den.transpose(0, 2, 1)[..., None]
  return out, m[..., 0] + jnp.log(den)


def mosaic_main(block_q=BLOCK_Q, block_kv=BLOCK_KV, steps=STEPS):
  """The Pallas Mosaic-GPU kernel as a `split_tail_attention` main: float16 staging, (out, natural-log lse)."""
  from jax.experimental.pallas.ops.gpu import attention_mgpu as am   # Mosaic GPU imports only when used
  cfg = am.TuningConfig(block_q=block_q, block_kv=block_kv, max_concurrent_steps=steps)

  def main(q, k, v):
    q16, k16, v16 = (a.astype(jnp.float16) for a in (q, k, v))
    out, (lse2,) = am.attention(q16, k16, v16, cfg, save_residuals=True)
    return out.astype(q.dtype), lse2 * math.log(2.0)

  return main


def check_supported(head_dim, has_bias, mask, key_lengths, platform):
  """A one-line UsageError for what the kernel cannot do."""
  if platform != "gpu":
    raise UsageError(f"attention impl 'pallas_gpu' needs a CUDA GPU (Hopper, sm90); this run is on {platform!r}; "
                     "use impl='auto'")
  if has_bias or mask is not None or key_lengths is not None:
    raise UsageError("attention impl 'pallas_gpu' supports no bias, mask or key lengths (bidirectional "
                     "self-attention only); use impl='cudnn'")
  if head_dim % 64:
    raise UsageError(f"attention impl 'pallas_gpu' needs a head dim that is a multiple of 64, got {head_dim}")


def pallas_gpu_attention(q, k, v, *, scale=None, block_q=BLOCK_Q, block_kv=BLOCK_KV, steps=STEPS, main=None):
  """Softmax attention of q `[B, L, N, K]` over k/v `[B, S, N, K]` through the Mosaic-GPU kernel (see the module
  docstring); output in q's dtype. `main` replaces the kernel (a CPU stand-in with its contract, for tests)."""
  main = main or mosaic_main(block_q, block_kv, steps)
  # q is scaled in float32; the kernel's main rounds it once, to float16.
  out = split_tail_attention(q.astype(jnp.float32), k, v, main=main, block_kv=block_kv, q_multiple=2 * block_q,
                             scale=scale)
  return out.astype(q.dtype)
