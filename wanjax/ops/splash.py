"""Splash attention (the TPU Pallas flash kernel) for long self-attention, behind `attention(impl="splash")`.

Wraps `jax.experimental.pallas.ops.tpu.splash_attention` (the kernel maxdiffusion calls `flash`, spec
jax_design.md B.3): layout conversion `[B, L, N, K]` <-> the kernel's head-major `[N, L, K]` (vmapped over B),
padding to lane-aligned block multiples with segment ids that hide the padded keys, the block-causal mask of
the causal models as a mask the kernel evaluates per tile (nothing `[L, S]`-sized is materialised), and, when
a mesh is active (`wanjax.sharding.activate`), a `shard_map` with q/out sharded on batch, length (`context`)
and heads (`tensor`) and k/v sharded on batch and heads only: every q shard attends to the full key length.

On any backend other than TPU the kernel runs in Pallas interpret mode: slow, but the same algorithm (blocked
online softmax, float32 accumulation), which is what the CPU tests compare against the XLA path.

Block sizes and padding (why 32,760 tokens cost 8 padded tokens, not more): the kernel tiles the key axis in
`block_kv_compute` columns that must be multiples of 128 (TPU lanes). 32,760 = 2^3·3^2·5·7·13 holds only 2^3,
so no multiple of 128 divides it and some key padding is unavoidable; the least is the next multiple of 128,
32,768 = 2^15, which every power-of-two block up to 32,768 divides. `choose_block` therefore minimises the
padded length first (within 0.5% of the least possible) and takes the largest block among those: 32,760 ->
32,768 (0.02% waste) with block_q 2048, block_kv 1024; 75,600 tokens (720p) -> 75,776 = 37·2048 (0.23%).
Padded query rows attend to real keys (segment id 0, so no row is empty) and are sliced off.
"""

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import NamedSharding, PartitionSpec as P

from wanjax import sharding as shd
from wanjax.errors import UsageError

LANES = 128                 # kernel constraint: block_kv_compute % 128 == 0
MAX_BLOCK_Q = 2048          # conservative for the default scoped VMEM; B.14 tunes up to 9472 on v6e/v7
MAX_BLOCK_KV = 1024
MAX_BLOCK_KV_COMPUTE = 512
PAD_TOLERANCE = 0.005       # accept up to 0.5% more padding than the least possible for a larger block


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """Tile sizes and padded lengths for one call; `q_len`/`kv_len` are the padded lengths."""
  block_q: int
  block_kv: int
  block_kv_compute: int
  q_len: int
  kv_len: int

  def kernel_blocks(self) -> sa.BlockSizes:
    # The fused backward kernel (one pass for dq, dk, dv) is what maxdiffusion uses for training.
    return sa.BlockSizes(
        block_q=self.block_q, block_kv=self.block_kv, block_kv_compute=self.block_kv_compute,
        block_q_dkv=self.block_q, block_kv_dkv=self.block_kv, block_kv_dkv_compute=self.block_kv_compute,
        use_fused_bwd_kernel=True)


def choose_block(length: int, max_block: int, shards: int = 1) -> tuple[int, int]:
  """(block, padded_length): a multiple of 128 up to `max_block` such that `padded_length`, a multiple of
  `block * shards`, is within PAD_TOLERANCE of the least lane-aligned padding; among those the largest."""
  if length < 1:
    raise UsageError(f"attention length {length} must be >= 1")
  cands = range(LANES, max(LANES, max_block) + 1, LANES)
  padded = {b: -(-length // (b * shards)) * b * shards for b in cands}
  least = min(padded.values())
  ok = [b for b in cands if padded[b] <= least + PAD_TOLERANCE * length]
  b = max(ok)
  return b, padded[b]


def plan_blocks(q_len: int, kv_len: int, q_shards: int = 1, *, max_block_q: int = MAX_BLOCK_Q,
                max_block_kv: int = MAX_BLOCK_KV) -> BlockPlan:
  """Block sizes and padded lengths for q of `q_len` (split over `q_shards` devices) and keys of `kv_len`."""
  bq, lq = choose_block(q_len, max_block_q, q_shards)
  bkv, lkv = choose_block(kv_len, max_block_kv)
  bkc = max(b for b in range(LANES, min(bkv, MAX_BLOCK_KV_COMPUTE) + 1, LANES) if bkv % b == 0)
  return BlockPlan(bq, bkv, bkc, lq, lkv)


class _BlockCausalMask(mask_lib._ComputableMask):  # private base class: the kernel's lazy-mask protocol
  """Key s visible to query l iff s // block_tokens <= (l + q_offset) // block_tokens (evaluated per tile)."""

  def __init__(self, shape, block_tokens: int, q_offset: int = 0, shard_count: int = 1):
    self.block_tokens, self.q_offset = int(block_tokens), int(q_offset)

    def fn(q_ids, kv_ids):
      return kv_ids // self.block_tokens <= (q_ids + self.q_offset) // self.block_tokens

    super().__init__(shape=shape, mask_function=fn, shard_count=shard_count)

  def __eq__(self, other):
    return (type(other) is type(self) and self.shape == other.shape
            and (self.block_tokens, self.q_offset) == (other.block_tokens, other.q_offset))

  def __hash__(self):
    return hash((type(self), self.shape, self.block_tokens, self.q_offset))


@functools.lru_cache(maxsize=32)
def _kernel(num_heads: int, plan: BlockPlan, causal: Optional[tuple[int, int]], head_shards: int,
            q_shards: int, interpret: bool):
  """The kernel object (mask block tables are computed on the host, once per shape)."""
  shape = (plan.q_len, plan.kv_len)
  if causal is None:
    one = mask_lib.FullMask(shape)
  else:
    one = _BlockCausalMask(shape, causal[0], causal[1], shard_count=q_shards)
  # Built eagerly (concrete mask tables) even when first called under jit, so the cached kernel holds no tracer.
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mha(mask_lib.MultiHeadMask([one] * num_heads), block_sizes=plan.kernel_blocks(),
                              head_shards=head_shards, q_seq_shards=q_shards, interpret=interpret)


def _axis_size(mesh, entry) -> int:
  if entry is None:
    return 1
  names = (entry,) if isinstance(entry, str) else tuple(entry)
  return math.prod(mesh.shape[n] for n in names)


def _segment_ids(batch, plan: BlockPlan, kv_len, key_lengths):
  """q ids all 0; kv ids 0 for a real key (< kv_len and < key_lengths[b]), 1 for padding -> `[B, Lp]`, `[B, Sp]`."""
  valid = jnp.arange(plan.kv_len)[None, :] < kv_len
  if key_lengths is not None:
    valid = jnp.logical_and(valid, jnp.arange(plan.kv_len)[None, :] < jnp.asarray(key_lengths)[:, None])
  kv = jnp.broadcast_to(jnp.where(valid, 0, 1).astype(jnp.int32), (batch, plan.kv_len))
  return jnp.zeros((batch, plan.q_len), jnp.int32), kv


def splash_attention(q, k, v, *, scale, key_lengths=None, block_causal=None, interpret=None,
                     max_block_q=MAX_BLOCK_Q, max_block_kv=MAX_BLOCK_KV):
  """Splash attention; q `[B, L, N, K]`, k/v `[B, S, N, K]` -> `[B, L, N, K]` in q's dtype.

  Args:
    scale: logits scale (applied to q in float32 before the kernel, which has no scale argument).
    key_lengths: optional int `[B]`: keys at positions >= length are not attended (must be >= 1).
    block_causal: optional `(block_tokens, q_offset)`: query l sees key s iff
      s // block_tokens <= (l + q_offset) // block_tokens.
    interpret: run the Pallas kernel in interpret mode; default: on any backend but TPU.
  """
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  b, lq, n, kd = q.shape
  s = k.shape[1]
  if k.shape != (b, s, n, kd) or v.shape[:3] != (b, s, n):
    raise UsageError(f"splash attention needs q [B, L, N, K] and k/v [B, S, N, K] with equal B, N, K; got q "
                     f"{q.shape}, k {k.shape}, v {v.shape}")
  mesh = shd.active_mesh()
  if mesh is not None:
    # Length is padded to a multiple of its shard count below, so ask the rules with a length that divides.
    any_len = math.prod(mesh.shape.values()) * LANES
    q_spec = shd.spec_for(("batch", "length", "act_heads", None), (b, any_len, n, kd), mesh)
    q_shards = _axis_size(mesh, q_spec[1])
  else:
    q_spec, q_shards = None, 1
  plan = plan_blocks(lq, s, q_shards, max_block_q=max_block_q, max_block_kv=max_block_kv)

  # [B, L, N, K] -> [B, N, L, K], scaled, padded.
  qt = (jnp.swapaxes(q, 1, 2).astype(jnp.float32) * scale).astype(q.dtype)
  kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  qt = jnp.pad(qt, ((0, 0), (0, 0), (0, plan.q_len - lq), (0, 0)))
  kt = jnp.pad(kt, ((0, 0), (0, 0), (0, plan.kv_len - s), (0, 0)))
  vt = jnp.pad(vt, ((0, 0), (0, 0), (0, plan.kv_len - s), (0, 0)))
  seg_q, seg_kv = _segment_ids(b, plan, s, key_lengths)
  causal = None if block_causal is None else (int(block_causal[0]), int(block_causal[1]))

  def local(kernel, qt, kt, vt, seg_q, seg_kv):
    seg = jax.vmap(sa.SegmentIds)(seg_q, seg_kv)
    return jax.vmap(kernel)(qt, kt, vt, segment_ids=seg)

  if mesh is None:
    out = local(_kernel(n, plan, causal, 1, 1, bool(interpret)), qt, kt, vt, seg_q, seg_kv)
  else:
    bt, lt, ht = q_spec[0], q_spec[1], q_spec[2]
    head_shards = _axis_size(mesh, ht)
    qs, kvs = P(bt, ht, lt, None), P(bt, ht, None, None)
    if causal is None:
      # The full mask is the same for every shard: build the per-shard kernel (local heads and q length)
      # and replicate it. (The global kernel's mask tables cannot be split: with q_seq_shards > 1 and no
      # partial blocks the installed splash's `_process_mask` concatenates an empty list.)
      local_plan = dataclasses.replace(plan, q_len=plan.q_len // q_shards)
      kernel = _kernel(n // head_shards, local_plan, None, 1, 1, bool(interpret))
      kernel_spec = jax.tree.map(lambda _: P(), kernel)
    else:
      kernel = _kernel(n, plan, causal, head_shards, q_shards, bool(interpret))
      kernel_spec = kernel.manual_sharding_spec(NamedSharding(mesh, P(ht, lt)))
    out = jax.shard_map(local, mesh=mesh, in_specs=(kernel_spec, qs, kvs, kvs, P(bt, lt), P(bt, None)),
                        out_specs=qs, check_vma=False)(kernel, qt, kt, vt, seg_q, seg_kv)
  return jnp.swapaxes(out[:, :, :lq], 1, 2).astype(q.dtype)
