"""Static-shape KV caches for block-wise autoregressive (causal) sampling of the Wan DiT, and the causal masks.

Mirrors the cache path of Self-Forcing's `CausalWanSelfAttention.forward` / `CausalWanModel._forward_inference`
(`wan/modules/causal_model.py`; CausVid's is the same without indices) — spec `distillation.md` §4.1–4.4:

- one buffer pair per layer, stacked: k, v `[num_layers, B, L_cache, N, K]` in the compute dtype; K is stored
  after RMSNorm and RoPE at **absolute** latent-frame positions, V raw;
- a call on n new tokens at absolute token position `start` writes them, then the new queries attend over
  every valid slot (plain softmax; the block's own keys included). Re-running the latest block overwrites
  its slots in place (`global_end` does not grow);
- `rolling=True` (SF `local_attn_size` / `sink_size`): when the video outgrows the buffer, the first
  `sink` tokens stay and the remaining `L_cache − sink` slots hold the most recent tokens. SF shifts the
  buffer left on eviction; here the non-sink slots are a ring (slot of position p ≥ sink is
  `sink + (p − sink) mod (L_cache − sink)`), which is the same key set, and attention does not depend on
  the order of keys once RoPE has been applied.

The valid slots are always a prefix `[0, local_end)`, so attention takes `key_lengths = local_end` (cuDNN
flash attention skips most of the rest). Indices are traced int32 scalars, so one compiled program serves every
block. Optionally (`kv_len`, a static int; `AROptions.kv_buckets`) attention reads only a static prefix of the
buffer that covers the block: a few programs, one per prefix length, each attending fewer masked slots. Writes use `lax.dynamic_update_slice` (a scatter only for the rolling ring, whose writes may wrap).

`cached_forward(model, cache, cross_kv, x, t, start_frame)` is the DiT forward of one block against the
cache (the same `WanDiT`, through `embed`-style pieces and `blocks_forward_cached`).
"""

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from wanjax.dit.attention import CrossKV
from wanjax.errors import UsageError

F32 = jnp.float32


@flax.struct.dataclass
class KVCache:
  """Self-attention K/V buffers of every layer plus the valid range (a pytree; sizes are static)."""
  k: jax.Array                 # [num_layers, B, L_cache, N, K] (RoPE'd keys)
  v: jax.Array                 # [num_layers, B, L_cache, N, K]
  global_end: jax.Array        # int32 scalar: absolute token end of the last write (SF `global_end_index`)
  local_end: jax.Array         # int32 scalar: number of valid slots, a prefix (SF `local_end_index`)
  sink: int = flax.struct.field(pytree_node=False, default=0)          # tokens kept forever (rolling only)
  rolling: bool = flax.struct.field(pytree_node=False, default=False)  # ring + sink, else positions = slots

  @property
  def size(self) -> int:
    return self.k.shape[2]


def init_cache(num_layers, batch, cache_tokens, num_heads, head_dim, *, dtype=F32, rolling=False,
               sink_tokens=0) -> KVCache:
  """An empty cache of `cache_tokens` slots per layer (SF: 21·1560 = 32760, or `local_attn_size`·1560)."""
  if cache_tokens < 1:
    raise UsageError(f"cache_tokens={cache_tokens} must be >= 1")
  if rolling and not 0 <= sink_tokens < cache_tokens:
    raise UsageError(f"sink_tokens={sink_tokens} must be in [0, cache_tokens={cache_tokens})")
  if not rolling and sink_tokens:
    raise UsageError(f"sink_tokens={sink_tokens} is only used by a rolling cache (rolling=True)")
  shape = (num_layers, batch, cache_tokens, num_heads, head_dim)
  zero = jnp.zeros((), jnp.int32)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), zero, zero, int(sink_tokens), bool(rolling))


def cache_for(model, batch, cache_frames, tokens_per_frame, *, rolling=False, sink_frames=0) -> KVCache:
  """`init_cache` sized for `model` (a WanDiT), in its compute dtype, counted in latent frames."""
  cfg = model.cfg
  return init_cache(cfg.num_layers, batch, cache_frames * tokens_per_frame, cfg.num_heads, cfg.head_dim,
                    dtype=model.policy.compute_dtype, rolling=rolling, sink_tokens=sink_frames * tokens_per_frame)


def reset(cache: KVCache) -> KVCache:
  """Empties the cache (indices to 0); stale slots are never read because only `[0, local_end)` is valid."""
  zero = jnp.zeros((), jnp.int32)
  return cache.replace(global_end=zero, local_end=zero)


def slots(cache: KVCache, start, n: int):
  """Buffer slots `[n]` int32 of the absolute token positions `[start, start + n)`."""
  p = jnp.asarray(start, jnp.int32) + jnp.arange(n, dtype=jnp.int32)
  if not cache.rolling:
    return p
  ring = cache.size - cache.sink
  return jnp.where(p < cache.sink, p, cache.sink + (p - cache.sink) % ring)


def write_plan(cache: KVCache, start, n: int):
  """(first slot, new global_end, new local_end) for writing n tokens at absolute position `start` (traced).

  Non-rolling: slot = position, valid = `[0, start + n)` (SF: `local_end' = local_end + current_end −
  global_end` with `local_end == global_end`; CV: attention reads `[:current_end]`). Rolling: the valid
  prefix grows until the buffer is full, then stays full (SF evicts exactly enough to keep it full).
  """
  start = jnp.asarray(start, jnp.int32)
  end = start + n
  local = jnp.minimum(end, cache.size) if cache.rolling else end
  return start, end, local


def check_kv_len(cache: KVCache, kv_len):
  """`kv_len` (static int or None): how many leading slots attention reads; None = all of them."""
  if kv_len is None:
    return
  if cache.rolling:
    raise UsageError("kv_len (attention over a prefix of the cache) needs a non-rolling cache: a rolling one "
                     "fills its whole buffer; leave kv_len=None (AROptions.kv_buckets=1)")
  if not 1 <= kv_len <= cache.size:
    raise UsageError(f"kv_len={kv_len} must be in [1, {cache.size}] (the cache's slots)")


def update_fn(cache: KVCache, start, n: int, kv_len=None, carried=False):
  """The per-layer `update` for `WanDiT.blocks_forward_cached`: writes the n new tokens and returns (k_all, v_all,
  key_lengths [B], kv'). With `kv_len` (a static int, non-rolling caches) k_all and v_all are the first `kv_len`
  slots only: the caller guarantees `start + n <= kv_len`, so attention sees the same keys in a shorter,
  statically sized buffer (`AROptions.kv_buckets`).

  `carried=False`: `update(layer_kv, k, v)` on one layer's buffers `[B, S, N, K]`; `carried=True`:
  `update(kv, layer, k, v)` on the whole stacked cache `[num_layers, B, S, N, K]`, written in place at `layer`."""
  check_kv_len(cache, kv_len)
  first, _, local = write_plan(cache, start, n)
  idx = slots(cache, start, n) if cache.rolling else None

  def lengths_for(b):
    return jnp.full((b,), local, jnp.int32)

  def update(layer_kv, k, v):
    kc, vc = layer_kv
    k, v = k.astype(kc.dtype), v.astype(vc.dtype)
    if idx is None:
      kc = jax.lax.dynamic_update_slice(kc, k, (0, first, 0, 0))
      vc = jax.lax.dynamic_update_slice(vc, v, (0, first, 0, 0))
    else:   # the ring may wrap inside one write; slots of one write are distinct (n <= ring size, checked)
      kc = kc.at[:, idx].set(k, unique_indices=True)
      vc = vc.at[:, idx].set(v, unique_indices=True)
    lengths = lengths_for(kc.shape[0])
    if kv_len is not None and kv_len < kc.shape[1]:
      return kc[:, :kv_len], vc[:, :kv_len], lengths, (kc, vc)
    return kc, vc, lengths, (kc, vc)

  def update_carried(kv, layer, k, v):
    kc, vc = kv
    k, v = k.astype(kc.dtype), v.astype(vc.dtype)
    if idx is None:
      kc = jax.lax.dynamic_update_slice(kc, k[None], (layer, 0, first, 0, 0))
      vc = jax.lax.dynamic_update_slice(vc, v[None], (layer, 0, first, 0, 0))
    else:
      # A scalar and an index array around a slice: numpy puts the indexed axis first, [n, B, N, K].
      kc = kc.at[layer, :, idx].set(jnp.swapaxes(k, 0, 1), unique_indices=True)
      vc = vc.at[layer, :, idx].set(jnp.swapaxes(v, 0, 1), unique_indices=True)
    size = (1, kc.shape[1], kv_len or kc.shape[2]) + kc.shape[3:]
    start_idx = (layer, 0, 0, 0, 0)
    k_all = jax.lax.dynamic_slice(kc, start_idx, size)[0]
    v_all = jax.lax.dynamic_slice(vc, start_idx, size)[0]
    return k_all, v_all, lengths_for(kc.shape[1]), (kc, vc)

  return update_carried if carried else update


def check_block_fits(cache: KVCache, n: int):
  """A block of n tokens must fit in the buffer (rolling: in the non-sink ring)."""
  room = cache.size - cache.sink if cache.rolling else cache.size
  if n > room:
    raise UsageError(f"a block of {n} tokens does not fit in the KV cache ({cache.size} slots, sink "
                     f"{cache.sink}); use a larger cache or fewer frames per block")


def prompt_kv(model, context, context_img=None) -> CrossKV:
  """Cross-attention K/V of every layer for a raw text context `[B, S, text_dim]` (computed once per prompt)."""
  ctx = model.text_embedding(jnp.asarray(context))
  ctx_img = None if context_img is None else model.img_emb(jnp.asarray(context_img))
  return model.cross_kv(ctx, ctx_img)


def cached_forward(model, cache: KVCache, cross_kv: CrossKV, x, t, start_frame, kv_len=None, carried=False):
  """One block through the DiT against the cache, writing its K/V.

  x `[B, f, H, W, C]` channels-last latent of the block's f frames; t `[B]` or per-frame `[B, f]`;
  start_frame: traced int32 absolute latent-frame index of the block's first frame (RoPE and cache slot);
  kv_len: None, or a static slot count >= the block's end token that attention reads (see `update_fn`);
  carried: the stacked cache rides in the layer loop's carry, written in place (inference; not for a loop that is
  differentiated: `WanDiT.blocks_forward_cached`).
  Returns (velocity float32 `[B, f, H, W, out_dim]`, updated cache).
  """
  cfg = model.cfg
  if cfg.has_image_input:
    raise UsageError(f"cached (causal) sampling supports t2v models; got model_type={cfg.model_type!r}")
  x = jnp.asarray(x)
  b, f = x.shape[:2]
  t = jnp.asarray(t, F32)
  if t.ndim == 1:
    t = jnp.broadcast_to(t[:, None], (b, f))
  tokens, grid = model.patch_embedding(x)
  e, e0 = model.time_embed(t)
  start_frame = jnp.asarray(start_frame, jnp.int32)
  cos, sin = model.rope(grid, start_frame)
  n = tokens.shape[1]
  check_block_fits(cache, n)
  update = update_fn(cache, start_frame * (n // grid[0]), n, kv_len, carried)
  h, (k, v) = model.blocks_forward_cached(tokens, e0, cos, sin, cross_kv, (cache.k, cache.v), update, carried)
  _, end, local = write_plan(cache, start_frame * (n // grid[0]), n)
  return model.head_forward(h, e, grid), cache.replace(k=k, v=v, global_end=end, local_end=local)


# ----------------------------------------------------------------------------------------------- dense masks


def block_frame_mask(num_frames: int, frames_per_block: int, *, window_frames: Optional[int] = None,
                     sink_frames: int = 0):
  """Boolean `[F, F]` frame-level mask (True = query frame attends key frame), NumPy.

  Block-causal (spec §4.1): key frame j is visible to query frame i iff j < end(i), the end of i's block.
  With `window_frames` W (SF `local_attn_size`): additionally j >= end(i) − (W − sink) or j < sink — the key
  set a rolling cache of W frames with `sink_frames` sink holds after writing i's block (sink 0 gives SF's
  training mask `k >= end(q) − L·1560`).
  """
  if frames_per_block < 1:
    raise UsageError(f"frames_per_block={frames_per_block} must be >= 1")
  i = np.arange(num_frames)[:, None]
  j = np.arange(num_frames)[None, :]
  end = (i // frames_per_block + 1) * frames_per_block
  allowed = j < end
  if window_frames is not None:
    allowed &= (j >= end - (window_frames - sink_frames)) | (j < sink_frames)
  return allowed


def token_mask(frame_mask, tokens_per_frame: int):
  """Expands a `[F, F]` frame mask to tokens `[F·T, F·T]` (tokens ordered frame-major)."""
  m = np.repeat(np.repeat(np.asarray(frame_mask), tokens_per_frame, axis=0), tokens_per_frame, axis=1)
  return jnp.asarray(m)
