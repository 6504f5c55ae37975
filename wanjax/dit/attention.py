"""Self- and cross-attention of the Wan DiT block, and the block-causal mask.

Mirrors `WanSelfAttention`, `WanT2VCrossAttention` and `WanI2VCrossAttention` of the reference
`wan/modules/model.py` (spec `wan_model.md` §1.8–1.10): q/k RMSNorm over the full width D (across heads), RoPE on
self-attention only, cross-attention over every text row without a mask, and for I2V a second attention over
the image tokens whose output is summed with the text output before the one shared `o` projection.

All samples of a batch share one shape (no per-sample padding), so no key-length masking is needed. The pieces
a KV cache needs are separate methods: `SelfAttention.qkv` (q/k after norm + RoPE at explicit positions, v raw),
`SelfAttention.attend`, and `CrossAttention.cross_kv` (per-prompt K/V that can be computed once and reused).

Layout: q `[B, L, N, K]`, k/v `[B, S, N, K]`.
"""

from typing import NamedTuple, Optional

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from flax import nnx

from wanjax import sharding as shd
from wanjax.dit.layers import RMSNorm
from wanjax.dit.rope import apply_rope
from wanjax.nn import Dense
from wanjax.ops.attention import BlockCausal, attention

F32 = jnp.float32
_HEADS = ("batch", "length", "act_heads", None)
_TEXT_HEADS = ("batch", "text_length", "act_heads", None)


def block_causal_mask(num_frames: int, tokens_per_frame: int, frames_per_block: int):
  """Boolean `[L, L]` mask (True = attend): bidirectional inside a block of `frames_per_block` latent frames,
  causal across blocks (spec distillation.md §4.1: key k visible to query q iff k < end of q's block)."""
  if frames_per_block < 1:
    raise ValueError(f"frames_per_block={frames_per_block} must be >= 1")
  frame = jnp.arange(num_frames * tokens_per_frame) // tokens_per_frame
  block = frame // frames_per_block
  return block[None, :] <= block[:, None]


class CrossKV(NamedTuple):
  """Per-prompt cross-attention keys/values `[B, S, N, K]`; the image pair is None for T2V."""
  k: jax.Array
  v: jax.Array
  k_img: Optional[jax.Array] = None
  v_img: Optional[jax.Array] = None


def _heads(x, n):
  return x.reshape(x.shape[:-1] + (n, x.shape[-1] // n))


class SelfAttention(nnx.Module):
  """q/k/v/o Linear (D -> D), RMSNorm on q and k over D, 3-D RoPE, softmax scale 1/sqrt(K)."""

  def __init__(self, dim, num_heads, *, eps, policy, attn_impl="auto", rngs: nnx.Rngs):
    kw = dict(compute_dtype=policy.compute_dtype, param_dtype=policy.param_dtype, rngs=rngs)
    self.q = Dense(dim, dim, axes=("embed", "heads"), **kw)
    self.k = Dense(dim, dim, axes=("embed", "heads"), **kw)
    self.v = Dense(dim, dim, axes=("embed", "heads"), **kw)
    self.o = Dense(dim, dim, axes=("heads", "embed"), **kw)
    self.norm_q = RMSNorm(dim, eps=eps, param_dtype=policy.param_dtype)
    self.norm_k = RMSNorm(dim, eps=eps, param_dtype=policy.param_dtype)
    self.num_heads = num_heads
    self.compute_dtype = policy.compute_dtype
    self.attn_impl = attn_impl

  def qkv(self, x, cos, sin):
    """x `[B, L, D]`; cos/sin `[L, K/2]` (rope.rope_cos_sin at the tokens' absolute positions) -> q, k (normed,
    rotated, float32) and v (compute dtype), each `[B, L, N, K]`."""
    n = self.num_heads
    q = apply_rope(_heads(self.norm_q(self.q(x)), n), cos, sin)
    k = apply_rope(_heads(self.norm_k(self.k(x)), n), cos, sin)
    v = _heads(self.v(x), n)
    q = checkpoint_name(shd.constrain(q, _HEADS), "query")
    k = checkpoint_name(shd.constrain(k, _HEADS), "key")
    v = checkpoint_name(shd.constrain(v, _HEADS), "value")
    return q, k, v

  def attend(self, q, k, v, mask=None, key_lengths=None):
    """Attention of q `[B, L, N, K]` over k/v `[B, S, N, K]` (mask `[L, S]` or broadcastable to `[B, N, L, S]`,
    True = attend; `key_lengths` int `[B]`: only the first keys are attended, as for a static-shape KV cache
    whose valid slots are a prefix), then `o` -> `[B, L, D]` in the compute dtype."""
    cd = self.compute_dtype
    if mask is not None and not isinstance(mask, BlockCausal) and mask.ndim == 2:
      mask = mask[None, None]
    out = attention(q.astype(cd), k.astype(cd), v.astype(cd), mask=mask, key_lengths=key_lengths,
                    impl=self.attn_impl)
    out = shd.constrain(out, _HEADS)
    out = out.reshape(out.shape[:2] + (-1,))
    return checkpoint_name(self.o(out), "self_attn_out")

  def __call__(self, x, cos, sin, mask=None):
    q, k, v = self.qkv(x, cos, sin)
    return self.attend(q, k, v, mask)


class CrossAttention(nnx.Module):
  """Text cross-attention (no RoPE, no mask); with `image=True` also the image branch `k_img`/`v_img`/
  `norm_k_img`, summed with the text branch before the shared `o`."""

  def __init__(self, dim, num_heads, *, eps, image, policy, attn_impl="auto", rngs: nnx.Rngs):
    kw = dict(compute_dtype=policy.compute_dtype, param_dtype=policy.param_dtype, rngs=rngs)
    self.q = Dense(dim, dim, axes=("embed", "heads"), **kw)
    self.k = Dense(dim, dim, axes=("embed", "heads"), **kw)
    self.v = Dense(dim, dim, axes=("embed", "heads"), **kw)
    self.o = Dense(dim, dim, axes=("heads", "embed"), **kw)
    self.norm_q = RMSNorm(dim, eps=eps, param_dtype=policy.param_dtype)
    self.norm_k = RMSNorm(dim, eps=eps, param_dtype=policy.param_dtype)
    if image:
      self.k_img = Dense(dim, dim, axes=("embed", "heads"), **kw)
      self.v_img = Dense(dim, dim, axes=("embed", "heads"), **kw)
      self.norm_k_img = RMSNorm(dim, eps=eps, param_dtype=policy.param_dtype)
    else:
      self.k_img = self.v_img = self.norm_k_img = None
    self.num_heads = num_heads
    self.compute_dtype = policy.compute_dtype
    self.attn_impl = attn_impl

  def cross_kv(self, context, context_img=None) -> CrossKV:
    """Keys/values of the embedded text `[B, S, D]` (and image tokens `[B, S_img, D]`), `[B, S, N, K]`."""
    n, cd = self.num_heads, self.compute_dtype
    k = shd.constrain(_heads(self.norm_k(self.k(context)), n).astype(cd), _TEXT_HEADS)
    v = shd.constrain(_heads(self.v(context), n), _TEXT_HEADS)
    if self.k_img is None:
      if context_img is not None:
        raise ValueError("image tokens given to a text-only cross-attention")
      return CrossKV(k, v)
    if context_img is None:
      raise ValueError("this cross-attention needs image tokens (context_img)")
    k_img = shd.constrain(_heads(self.norm_k_img(self.k_img(context_img)), n).astype(cd), _TEXT_HEADS)
    v_img = shd.constrain(_heads(self.v_img(context_img), n), _TEXT_HEADS)
    return CrossKV(k, v, k_img, v_img)

  def __call__(self, x, context=None, context_img=None, *, kv: Optional[CrossKV] = None):
    """x `[B, L, D]` (the norm3 output) -> `[B, L, D]` in the compute dtype. Pass `kv` to reuse cached K/V."""
    cd = self.compute_dtype
    if kv is None:
      kv = self.cross_kv(context, context_img)
    q = shd.constrain(_heads(self.norm_q(self.q(x)), self.num_heads).astype(cd), _HEADS)
    out = attention(q, kv.k, kv.v, impl=self.attn_impl)
    out = out.reshape(out.shape[:2] + (-1,))
    if kv.k_img is not None:
      img = attention(q, kv.k_img, kv.v_img, impl=self.attn_impl)
      # Both branch outputs are cast to the query dtype (float32) and summed before `o` (§1.10).
      out = out.astype(F32) + img.reshape(img.shape[:2] + (-1,)).astype(F32)
    return checkpoint_name(self.o(out), "cross_attn_out")
