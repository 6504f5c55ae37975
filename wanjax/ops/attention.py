"""Attention behind one small dispatch: `attention(q, k, v, ...)`.

Implementations:
- "xla": explicit einsum softmax; logits, softmax and accumulation in float32, probabilities rounded to the
  value dtype before the PV product (what a flash kernel does). Works everywhere; supports bias and masks.
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (flash attention on CUDA GPUs). Needs
  bf16/fp16 inputs; supports key-length masking, no additive bias.
- "splash": the TPU Pallas splash kernel (`wanjax/ops/splash.py`; interpret mode off TPU). No bias; masks as
  key lengths or `BlockCausal`.
- "pallas_gpu": JAX's Pallas Mosaic-GPU flash kernel for Hopper (`wanjax/ops/pallas_gpu.py`), opt-in and
  inference only: no bias, mask or key lengths; never chosen by "auto".
- "auto": "cudnn" on a CUDA GPU when the inputs are half precision and no bias is given; "splash" on TPU for
  long self-attention (both lengths >= SPLASH_MIN_LENGTH, head dim a multiple of 128, no bias, mask None or
  `BlockCausal`), so the 512-token text cross-attention stays on XLA; else "xla".

`mask` may be a boolean array or a `BlockCausal` description (the causal models' mask); the latter is
materialised only for the paths that need a dense mask.

Layout: q `[B, L, N, K]`, k/v `[B, S, N, K]` (batch, length, heads, head dim); output `[B, L, N, K]` in q's
dtype.
"""

import dataclasses

import jax
import jax.numpy as jnp

from wanjax.errors import UsageError

IMPLS = ("auto", "xla", "cudnn", "splash", "pallas_gpu")
SPLASH_MIN_LENGTH = 1024   # shorter sequences (text / image cross-attention) gain nothing from tiling


@dataclasses.dataclass(frozen=True)
class BlockCausal:
  """Block-causal mask: query l sees key s iff s // block_tokens <= (l + q_offset) // block_tokens
  (spec distillation.md §4.1; block_tokens = frames_per_block * tokens per latent frame)."""
  block_tokens: int
  q_offset: int = 0

  def dense(self, q_len: int, kv_len: int):
    """Boolean `[1, 1, L, S]`, True = attend."""
    ql = (jnp.arange(q_len) + self.q_offset) // self.block_tokens
    ks = jnp.arange(kv_len) // self.block_tokens
    return (ks[None, :] <= ql[:, None])[None, None]


def _on_tpu() -> bool:
  try:
    return jax.default_backend() == "tpu"
  except RuntimeError:
    return False


def splash_supports(q_len: int, kv_len: int, head_dim: int, has_bias: bool, mask) -> bool:
  """Worth (and able) to use splash: long self-attention lengths, lane-aligned head dim, no bias, no dense mask."""
  return (not has_bias and (mask is None or isinstance(mask, BlockCausal)) and head_dim % 128 == 0
          and min(q_len, kv_len) >= SPLASH_MIN_LENGTH)


def _on_gpu() -> bool:
  try:
    return jax.default_backend() == "gpu"
  except RuntimeError:
    return False


def cudnn_supports(head_dim: int, dtype, has_bias: bool) -> bool:
  """cuDNN flash attention needs half-precision inputs and a head dim that is a multiple of 8, at most 256."""
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return half and not has_bias and head_dim % 8 == 0 and head_dim <= 256


def resolve_impl(impl: str, dtype, has_bias: bool, head_dim: int = 128) -> str:
  if impl not in IMPLS:
    raise UsageError(f"unknown attention implementation {impl!r}; valid: {', '.join(IMPLS)}")
  if impl != "auto":
    return impl
  return "cudnn" if (_on_gpu() and cudnn_supports(head_dim, dtype, has_bias)) else "xla"


def _xla(q, k, v, *, bias, mask, scale):
  logits = jnp.einsum("BLNK,BSNK->BNLS", q, k, preferred_element_type=jnp.float32)
  if scale != 1.0:
    logits = logits * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("BNLS,BSNK->BLNK", probs, v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def attention(q, k, v, *, bias=None, mask=None, key_lengths=None, scale=None, impl="auto"):
  """Multi-head attention.

  Args:
    q: `[B, L, N, K]`; k, v: `[B, S, N, K]`.
    bias: optional additive logits bias broadcastable to `[B, N, L, S]` (T5 relative positions).
    mask: optional boolean, broadcastable to `[B, N, L, S]`; False = not attended; or a `BlockCausal`.
    key_lengths: optional int `[B]`; keys at positions >= length are not attended (padded video tokens).
    scale: logits scale; default `1/sqrt(K)`. T5 passes 1.0.
    impl: "auto" | "xla" | "cudnn" | "splash" | "pallas_gpu".
  """
  if scale is None:
    scale = q.shape[-1] ** -0.5
  if impl == "splash" or (impl == "auto" and _on_tpu()
                          and splash_supports(q.shape[1], k.shape[1], q.shape[-1], bias is not None, mask)):
    if bias is not None or not (mask is None or isinstance(mask, BlockCausal)):
      raise UsageError("attention impl 'splash' supports key_lengths and a BlockCausal mask, not an additive bias "
                       "or a dense mask; use impl='xla'")
    from wanjax.ops.splash import splash_attention  # Pallas TPU imports only when used
    causal = None if mask is None else (mask.block_tokens, mask.q_offset)
    return splash_attention(q, k, v, scale=scale, key_lengths=key_lengths, block_causal=causal)
  if impl == "pallas_gpu":
    from wanjax.ops import pallas_gpu  # Mosaic GPU imports only when used
    pallas_gpu.check_supported(q.shape[-1], bias is not None, mask, key_lengths, jax.default_backend())
    return pallas_gpu.pallas_gpu_attention(q, k, v, scale=scale)
  if isinstance(mask, BlockCausal):
    mask = mask.dense(q.shape[1], k.shape[1])
  which = resolve_impl(impl, q.dtype, bias is not None, q.shape[-1])
  if which == "cudnn":
    if bias is not None:
      raise UsageError("attention impl 'cudnn' does not support an additive bias; use impl='xla'")
    if key_lengths is not None:
      key_lengths = jnp.asarray(key_lengths, jnp.int32)
      q_lengths = jnp.full_like(key_lengths, q.shape[1])
    else:
      q_lengths = None
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, implementation="cudnn",
        query_seq_lengths=q_lengths, key_value_seq_lengths=key_lengths)
  if key_lengths is not None:
    keep = jnp.arange(k.shape[1])[None, :] < jnp.asarray(key_lengths)[:, None]  # [B, S]
    keep = keep[:, None, None, :]
    mask = keep if mask is None else jnp.logical_and(mask, keep)
  return _xla(q, k, v, bias=bias, mask=mask, scale=scale)
