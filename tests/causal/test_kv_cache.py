"""KV-cache equivalences of the causal DiT (spec distillation.md §4.1–4.3, §10 "Causal model and caches"), fp32 CPU.

References are the parallel forward of the same WanDiT with a dense mask (block-causal, or windowed with a
sink), recomputing everything; the cache path goes through `kv_cache.cached_forward`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.causal.helpers import CFG, TOKENS_PER_FRAME, context, latents, random_dit
from tests.conftest import max_rel_err
from wanjax.dit import kv_cache
from wanjax.dit.attention import block_causal_mask

TOL_FP32 = 1e-5          # cached vs parallel forward: max|a − ref| ≤ TOL · max|ref| (task spec)
NFPB = 2                 # frames per block (distinct from the number of blocks)
T_NOISY = (937.5, 833.3333, 625.0)


@pytest.fixture(scope="module")
def model():
  return random_dit(seed=0)


@functools.partial(jax.jit, static_argnums=0)
def _dense(graphdef, params, x, t, ctx, mask):
  """Parallel forward with an explicit token mask (the reference)."""
  m = nnx.merge(graphdef, params)
  emb = m.embed(x, t, ctx)
  cos, sin = m.rope(emb.grid)
  h = m.blocks_forward(emb.tokens, emb.e0, emb.context, emb.context_img, cos, sin, mask=mask)
  return m.head_forward(h, emb.e, emb.grid)


@functools.partial(jax.jit, static_argnums=0)
def _cached(graphdef, params, cache, ckv, x, t, start_frame):
  return kv_cache.cached_forward(nnx.merge(graphdef, params), cache, ckv, x, t, start_frame)


@functools.partial(jax.jit, static_argnums=0)
def _prompt(graphdef, params, ctx):
  return kv_cache.prompt_kv(nnx.merge(graphdef, params), ctx)


def _run_cached(model, ctx, clean, noisy, rolling=False, cache_frames=None, sink_frames=0):
  """For every block b: context passes of clean blocks < b are in the cache, then block b is run at each of
  T_NOISY (re-runs overwrite its slot), then its clean context pass. Returns per block the velocities."""
  graphdef, params = nnx.split(model)
  f = clean.shape[1]
  cache = kv_cache.cache_for(model, 1, cache_frames or f, TOKENS_PER_FRAME, rolling=rolling,
                             sink_frames=sink_frames)
  ckv = _prompt(graphdef, params, ctx)
  outs = []
  for b in range(f // NFPB):
    sl = slice(b * NFPB, (b + 1) * NFPB)
    vs = []
    for t in T_NOISY:
      v, cache = _cached(graphdef, params, cache, ckv, noisy[:, sl], jnp.full((1,), t), b * NFPB)
      vs.append(v)
    _, cache = _cached(graphdef, params, cache, ckv, clean[:, sl], jnp.zeros((1,)), b * NFPB)
    outs.append(vs)
  return outs, cache


def _reference(model, ctx, clean, noisy, mask):
  """Full recompute: `[clean_0..clean_{b−1}, noisy_b, clean after]` with t `[0..0, t_b, 0..]`, masked."""
  graphdef, params = nnx.split(model)
  f = clean.shape[1]
  outs = []
  for b in range(f // NFPB):
    sl = slice(b * NFPB, (b + 1) * NFPB)
    x = np.array(clean)
    x[:, sl] = noisy[:, sl]
    vs = []
    for t in T_NOISY:
      tt = np.zeros((1, f), np.float32)
      tt[:, sl] = t
      vs.append(_dense(graphdef, params, jnp.asarray(x), jnp.asarray(tt), ctx, mask)[:, sl])
    outs.append(vs)
  return outs


def test_cached_blocks_equal_block_causal_parallel_forward(model):
  f = 3 * NFPB
  ctx, clean, noisy = context(), latents(f, seed=2), latents(f, seed=3)
  mask = block_causal_mask(f, TOKENS_PER_FRAME, NFPB)
  got, cache = _run_cached(model, ctx, clean, noisy)
  ref = _reference(model, ctx, clean, noisy, mask)
  errs = [max_rel_err(g, r) for gs, rs in zip(got, ref) for g, r in zip(gs, rs)]
  assert max(errs) <= TOL_FP32, errs
  assert int(cache.global_end) == int(cache.local_end) == f * TOKENS_PER_FRAME


def test_cached_blocks_with_scan_unroll(model):
  """The cached forward's scanned layer loop with 2 layers per iteration gives the same velocities."""
  f = 2 * NFPB
  ctx, clean, noisy = context(), latents(f, seed=4), latents(f, seed=5)
  unrolled = random_dit(seed=0, scan_unroll=2)
  got, _ = _run_cached(unrolled, ctx, clean, noisy)
  ref, _ = _run_cached(model, ctx, clean, noisy)
  errs = [max_rel_err(g, r) for gs, rs in zip(got, ref) for g, r in zip(gs, rs)]
  assert max(errs) <= TOL_FP32, errs


def test_rerun_overwrites_slot_and_keeps_global_end(model):
  """Several calls on one block then its context pass leave the same cache as one context pass."""
  graphdef, params = nnx.split(model)
  f = 2 * NFPB
  ctx, clean, noisy = context(), latents(f, seed=4), latents(f, seed=5)
  ckv = _prompt(graphdef, params, ctx)
  n = NFPB * TOKENS_PER_FRAME

  def prefix():
    cache = kv_cache.cache_for(model, 1, f, TOKENS_PER_FRAME)
    _, cache = _cached(graphdef, params, cache, ckv, clean[:, :NFPB], jnp.zeros((1,)), 0)
    return cache

  a = prefix()
  for t in T_NOISY:
    _, a = _cached(graphdef, params, a, ckv, noisy[:, NFPB:], jnp.full((1,), t), NFPB)
    assert int(a.global_end) == 2 * n and int(a.local_end) == 2 * n
  _, a = _cached(graphdef, params, a, ckv, clean[:, NFPB:], jnp.zeros((1,)), NFPB)
  _, b = _cached(graphdef, params, prefix(), ckv, clean[:, NFPB:], jnp.zeros((1,)), NFPB)
  np.testing.assert_array_equal(np.asarray(a.k), np.asarray(b.k))
  np.testing.assert_array_equal(np.asarray(a.v), np.asarray(b.v))


def test_rolling_cache_equals_windowed_mask(model):
  """Rolling cache of 5 frames with a 1-frame sink over 8 frames vs the dense windowed mask, absolute RoPE."""
  f, window, sink = 4 * NFPB, 5, 1
  ctx, clean, noisy = context(seed=6), latents(f, seed=7), latents(f, seed=8)
  mask = kv_cache.token_mask(kv_cache.block_frame_mask(f, NFPB, window_frames=window, sink_frames=sink),
                             TOKENS_PER_FRAME)
  got, cache = _run_cached(model, ctx, clean, noisy, rolling=True, cache_frames=window, sink_frames=sink)
  ref = _reference(model, ctx, clean, noisy, mask)
  errs = [max_rel_err(g, r) for gs, rs in zip(got, ref) for g, r in zip(gs, rs)]
  assert max(errs) <= TOL_FP32, errs
  # The window really cuts: the unwindowed block-causal forward differs for the last block.
  full = _reference(model, ctx, clean, noisy, block_causal_mask(f, TOKENS_PER_FRAME, NFPB))
  assert max_rel_err(got[-1][0], full[-1][0]) > 1e3 * TOL_FP32
  # Logical contents: [first `sink` frames] + [last window − sink frames]. Layer-0 keys depend only on their own
  # frame, so they can be compared with an unbounded cache slot by slot.
  _, big = _run_cached(model, ctx, clean, noisy)
  tpf = TOKENS_PER_FRAME
  keep = list(range(sink * tpf)) + list(range((f - (window - sink)) * tpf, f * tpf))
  slots = np.asarray(kv_cache.slots(cache, jnp.asarray(keep[0]), 1))  # noqa: F841 (exercise the helper)
  ring_slots = np.asarray(kv_cache.slots(cache, jnp.int32(0), f * tpf))[keep]
  assert sorted(ring_slots.tolist()) == list(range(window * tpf))
  np.testing.assert_array_equal(np.asarray(cache.k[0][:, ring_slots]), np.asarray(big.k[0][:, keep]))
  assert int(cache.local_end) == window * tpf and int(cache.global_end) == f * tpf


def test_windowed_mask_without_sink_is_sf_training_window():
  """sink 0: key j visible iff end(i) − L ≤ j < end(i) (SF `_prepare_blockwise_causal_attn_mask`, §4.1)."""
  m = kv_cache.block_frame_mask(9, 3, window_frames=4)
  for i in range(9):
    end = (i // 3 + 1) * 3
    assert [j for j in range(9) if m[i, j]] == list(range(max(0, end - 4), end))
  np.testing.assert_array_equal(kv_cache.block_frame_mask(6, 2),
                                np.asarray(block_causal_mask(6, 1, 2)))


def test_block_causal_mask_21_frames_matches_spec_rule():
  """§10: 21 frames, 3 per block, 4 tokens per frame: `allowed(q, k) = k < end(q) or q == k` with
  end(q) = (beta(q) + 1)·nfpb·tpf (§4.1), as a dense comparison; query of block beta sees blocks <= beta."""
  f, nfpb, tpf = 21, 3, 4
  got = np.asarray(block_causal_mask(f, tpf, nfpb))
  q, k = np.meshgrid(np.arange(f * tpf), np.arange(f * tpf), indexing="ij")
  end = (q // tpf // nfpb + 1) * nfpb * tpf
  np.testing.assert_array_equal(got, (k < end) | (q == k))
  assert got.sum() == sum((b + 1) * nfpb * tpf * nfpb * tpf for b in range(f // nfpb))
  # The frame-level mask the rolling cache uses agrees with the token-level one when unwindowed.
  np.testing.assert_array_equal(np.asarray(kv_cache.token_mask(kv_cache.block_frame_mask(f, nfpb), tpf)), got)


def test_cross_attention_cache_equals_recompute(model):
  graphdef, params = nnx.split(model)
  ctx = jnp.asarray(context(seed=9))
  x = jnp.asarray(latents(NFPB, seed=10))

  @jax.jit
  def both(params):
    m = nnx.merge(graphdef, params)
    emb = m.embed(x, jnp.full((1,), 500.0), ctx)
    cos, sin = m.rope(emb.grid)
    plain = m.blocks_forward(emb.tokens, emb.e0, emb.context, None, cos, sin)
    cached = m.blocks_forward(emb.tokens, emb.e0, None, None, cos, sin, cross_kv=kv_cache.prompt_kv(m, ctx))
    return plain, cached

  plain, cached = both(params)
  assert max_rel_err(cached, plain) <= TOL_FP32


def test_rope_offset_equals_full_sequence_slice(model):
  cos_full, sin_full = model.rope((7, 2, 3))
  cos_b, sin_b = model.rope((2, 2, 3), jnp.int32(4))
  sl = slice(4 * 6, 6 * 6)
  np.testing.assert_allclose(np.asarray(cos_b), np.asarray(cos_full[sl]), atol=1e-7)
  np.testing.assert_allclose(np.asarray(sin_b), np.asarray(sin_full[sl]), atol=1e-7)


def test_block_too_large_for_cache_is_a_usage_error(model):
  from wanjax.errors import UsageError
  cache = kv_cache.cache_for(model, 1, 3, TOKENS_PER_FRAME, rolling=True, sink_frames=2)
  with pytest.raises(UsageError, match="does not fit"):
    kv_cache.check_block_fits(cache, NFPB * TOKENS_PER_FRAME)


def test_kv_len_attends_a_static_prefix_holding_the_same_keys(model):
  """`kv_len`: attention gets the first kv_len slots (the written block included), the whole buffer is still
  written, and the forward agrees with the full-buffer one; rolling caches and lengths outside the buffer are
  refused."""
  from wanjax.errors import UsageError
  cache = kv_cache.cache_for(model, 1, 6, TOKENS_PER_FRAME)
  n, kv_len = NFPB * TOKENS_PER_FRAME, 4 * TOKENS_PER_FRAME
  shape = cache.k.shape[1:2] + (n,) + cache.k.shape[3:]
  k_new, v_new = jnp.ones(shape), jnp.full(shape, 2.0)
  layer = (cache.k[0], cache.v[0])
  k_all, v_all, lengths, (kc, vc) = kv_cache.update_fn(cache, 2 * TOKENS_PER_FRAME, n, kv_len)(layer, k_new, v_new)
  assert k_all.shape[1] == v_all.shape[1] == kv_len and kc.shape == layer[0].shape
  assert int(lengths[0]) == kv_len and float(k_all[0, 2 * TOKENS_PER_FRAME:].min()) == 1.0
  ctx = kv_cache.prompt_kv(model, jnp.asarray(context()))
  x, t = jnp.asarray(latents(NFPB, seed=4)), jnp.full((1,), 937.5)
  full, c_full = kv_cache.cached_forward(model, cache, ctx, x, t, 0)
  short, c_short = kv_cache.cached_forward(model, cache, ctx, x, t, 0, kv_len=NFPB * TOKENS_PER_FRAME)
  assert max_rel_err(short, full) <= TOL_FP32
  # Layer 0's keys come before any attention: identical; later layers' follow the outputs, to rounding.
  np.testing.assert_array_equal(np.asarray(c_short.k[0]), np.asarray(c_full.k[0]))
  assert max_rel_err(c_short.k, c_full.k) <= TOL_FP32 and max_rel_err(c_short.v, c_full.v) <= TOL_FP32
  with pytest.raises(UsageError, match=rf"kv_len={7 * TOKENS_PER_FRAME} must be in \[1, {6 * TOKENS_PER_FRAME}\]"):
    kv_cache.check_kv_len(cache, 7 * TOKENS_PER_FRAME)
  with pytest.raises(UsageError, match="non-rolling"):
    kv_cache.check_kv_len(kv_cache.cache_for(model, 1, 6, TOKENS_PER_FRAME, rolling=True), n)


def _blocks(model, cache, ctx, carried, kv_len=None, n_blocks=3):
  vs = []
  for b in range(n_blocks):
    x = jnp.asarray(latents(NFPB, seed=20 + b))
    v, cache = kv_cache.cached_forward(model, cache, ctx, x, jnp.full((1,), 900.0), NFPB * b, carried=carried,
                                       kv_len=kv_len)
    vs.append(np.asarray(v))
  return vs, cache


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("rolling", [False, True])
def test_cache_in_the_carry_is_bit_identical_to_per_layer_slices(rolling, scan):
  """The carried form (the whole stacked cache in the layer loop's carry, written in place) computes exactly what the
  per-layer form does, for plain and rolling caches, scanned and Python-loop layers."""
  model = random_dit(seed=1, scan=scan)
  ctx = kv_cache.prompt_kv(model, jnp.asarray(context(seed=2)))
  cache = kv_cache.cache_for(model, 1, 4 if rolling else 6, TOKENS_PER_FRAME, rolling=rolling,
                             sink_frames=1 if rolling else 0)
  want, c_want = _blocks(model, cache, ctx, carried=False)
  got, c_got = _blocks(model, cache, ctx, carried=True)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(np.asarray(c_got.k), np.asarray(c_want.k))
  np.testing.assert_array_equal(np.asarray(c_got.v), np.asarray(c_want.v))
  assert int(c_got.local_end) == int(c_want.local_end) and int(c_got.global_end) == int(c_want.global_end)
  if not rolling:   # with a static attention length too
    short, _ = _blocks(model, cache, ctx, carried=True, kv_len=2 * NFPB * TOKENS_PER_FRAME, n_blocks=2)
    np.testing.assert_allclose(short[1], want[1], rtol=0, atol=TOL_FP32 * np.abs(want[1]).max())


def test_cache_in_the_carry_drops_the_whole_cache_copies(model):
  """What the carried form is for: the per-layer form's compiled program copies the whole stacked cache at its
  edges (XLA's loop output buffers); the carried one updates the donated cache in place (no such copy)."""
  import re
  cache = kv_cache.cache_for(model, 1, 6, TOKENS_PER_FRAME)
  ctx = kv_cache.prompt_kv(model, jnp.asarray(context()))
  x, t = jnp.asarray(latents(NFPB)), jnp.full((1,), 900.0)
  shape = ",".join(str(d) for d in cache.k.shape)
  copies = {}
  for carried in (False, True):
    fwd = jax.jit(functools.partial(kv_cache.cached_forward, carried=carried), donate_argnums=1)
    hlo = fwd.lower(model, cache, ctx, x, t, jnp.int32(0)).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    copies[carried] = len(re.findall(rf"= f32\[{shape}\]\S* copy\(", entry))
  assert copies[False] >= 1 and copies[True] == 0, copies
