"""AR samplers (spec distillation.md §4.2, §4.4–4.6, §0.4, §10): step lists, model-call counts, one compiled
program, reproducibility with injected noise, and the Self-Forcing sampler against a straightforward
re-implementation without a cache (full recompute with the block-causal mask), fp32 CPU."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.causal.helpers import C, H, W, context, latents, random_dit
from tests.conftest import max_rel_err
from wanjax import sampling_ar
from wanjax.errors import UsageError

TOL_FP32 = 1e-5
SF = sampling_ar.AROptions(frames_per_block=2, cache_frames=6)          # SF steps/shift, smaller blocks
CV = sampling_ar.AROptions(frames_per_block=2, cache_frames=6, steps=(1000, 757, 522, 0), shift=8.0, warp=False)
LX9 = (999, 934, 862, 756, 603, 410, 250, 140, 74)


@pytest.fixture(scope="module")
def model():
  return random_dit(seed=0)


def _renoise(opts, num_blocks, seed=11):
  n = len(sampling_ar.schedule(opts)[0])
  rng = np.random.default_rng(seed)
  return rng.standard_normal((num_blocks, n - 1, 1, opts.frames_per_block, H, W, C)).astype(np.float32)


# ------------------------------------------------------------------------------------------ step lists


def test_step_lists_match_spec():
  t, s = sampling_ar.schedule(sampling_ar.AROptions())
  np.testing.assert_allclose(t, [1000, 937.5, 833.3333, 625], rtol=1e-6)
  np.testing.assert_allclose(s, [1, 0.9375, 0.8333333, 0.625, 0], rtol=1e-6)
  t, s = sampling_ar.schedule(CV)
  np.testing.assert_allclose(t, [1000, 757, 522])
  np.testing.assert_allclose(s, [1.0, 0.7567567, 0.5217391, 0], atol=2e-7)     # nearest-grid σ (§0.3)
  t, s = sampling_ar.schedule(sampling_ar.AROptions(steps=(1000, 757, 522), shift=8.0, warp=False,
                                                    sigma_lookup="exact"))
  np.testing.assert_allclose(s, [1.0, 0.757, 0.522, 0], atol=1e-7)
  # LX CausVid 9-step list: used directly (σ = t/1000) or re-warped at shift 8 (§4.5).
  direct = sampling_ar.AROptions(steps=LX9, shift=8.0, warp=False, sigma_lookup="exact")
  np.testing.assert_allclose(sampling_ar.schedule(direct)[1][:-1], np.asarray(LX9) / 1000, atol=1e-7)
  rewarp = sampling_ar.AROptions(steps=LX9, shift=8.0, warp=True)
  np.testing.assert_allclose(sampling_ar.schedule(rewarp)[1][:-1],
                             [0.9999, 0.9912, 0.9804, 0.9612, 0.9240, 0.8475, 0.7273, 0.5657, 0.3900], atol=1e-4)


def test_bad_options_are_usage_errors():
  with pytest.raises(UsageError, match="update="):
    sampling_ar.AROptions(update="ddim").validate()
  with pytest.raises(UsageError, match="strictly decreasing"):
    sampling_ar.AROptions(steps=(500, 750)).validate()
  with pytest.raises(UsageError, match="overlap_frames"):
    sampling_ar.AROptions(long_video="rollouts", overlap_frames=4).validate()


# ------------------------------------------------------------------------------------------ the sampler


def test_calls_per_block_and_one_program_for_all_blocks_and_frame_counts(model):
  before = sampling_ar.TRACE_COUNTS["forward"]
  ctx = context()
  res6 = sampling_ar.generate(model, ctx, latents(6), SF, rng=jax.random.key(0))
  res4 = sampling_ar.generate(model, ctx, latents(4), SF, rng=jax.random.key(1))
  assert res6.latents.shape == (1, 6, H, W, C) and res4.latents.shape == (1, 4, H, W, C)
  # SF: 4 denoising calls + 1 context pass per block (§4.2), none after the last block; 3 and 2 blocks.
  assert res6.stats["model_calls"] == 3 * 5 - 1 and res4.stats["model_calls"] == 2 * 5 - 1
  assert sampling_ar.TRACE_COUNTS["forward"] - before <= 1     # 0 if an earlier test compiled the same shapes
  cv = sampling_ar.generate(model, ctx, latents(6), CV, rng=jax.random.key(0))
  assert cv.stats["model_calls"] == 3 * 4 - 1                   # CV: 3 + 1
  lx = sampling_ar.AROptions(frames_per_block=2, cache_frames=6, steps=LX9, shift=8.0, warp=False,
                             sigma_lookup="exact", update="unipc", context_pass=False)
  assert sampling_ar.generate(model, ctx, latents(6), lx).stats["model_calls"] == 3 * 9   # no context pass
  assert sampling_ar.TRACE_COUNTS["forward"] - before <= 1


def test_injected_noise_is_bit_reproducible(model):
  ctx, noise = context(), latents(6, seed=3)
  ren = _renoise(SF, 3)
  a = sampling_ar.generate(model, ctx, noise, SF, renoise=ren).latents
  b = sampling_ar.generate(model, ctx, noise, SF, renoise=ren).latents
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = sampling_ar.generate(model, ctx, noise, SF, renoise=_renoise(SF, 3, seed=12)).latents
  assert not np.array_equal(np.asarray(a), np.asarray(c))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _full(graphdef, params, x, t, ctx, nfpb):
  return nnx.merge(graphdef, params)(x, t, ctx, frames_per_block=nfpb)


def _sf_reference(model, ctx, noise, renoise, opts):
  """No cache: every call recomputes `[x0_0..x0_{b−1}, x_b]` (t = 0 for finished blocks) with the block mask."""
  graphdef, params = nnx.split(model)
  t_list, sig = sampling_ar.schedule(opts)
  nf, f = opts.frames_per_block, noise.shape[1]
  out = np.zeros_like(noise)
  for b in range(f // nf):
    sl = slice(b * nf, (b + 1) * nf)
    x = noise[:, sl].astype(np.float64)
    for i, t in enumerate(t_list):
      seq = np.concatenate([out[:, :b * nf], x.astype(np.float32)], axis=1)
      tt = np.zeros((1, (b + 1) * nf), np.float32)
      tt[:, b * nf:] = t
      v = np.asarray(_full(graphdef, params, jnp.asarray(seq), jnp.asarray(tt), jnp.asarray(ctx), nf))[:, b * nf:]
      x0 = x - float(sig[i]) * v
      if i < len(t_list) - 1:
        x = (1 - float(sig[i + 1])) * x0 + float(sig[i + 1]) * renoise[b, i]
    out[:, sl] = x0
  return out


def test_self_forcing_equals_uncached_reimplementation(model):
  ctx, noise = context(seed=5), latents(6, seed=6)
  ren = _renoise(SF, 3, seed=7)
  got = sampling_ar.generate(model, ctx, noise, SF, renoise=ren).latents
  ref = _sf_reference(model, ctx, noise, ren, SF)
  assert max_rel_err(got, ref) <= TOL_FP32


def test_skipping_the_last_context_pass_changes_nothing_but_the_call_count(model):
  ctx, noise = context(seed=8), latents(6, seed=9)
  ren = _renoise(SF, 3, seed=10)
  outs, calls = [], []
  for last in (True, False):
    s = sampling_ar.ARSampler(model, SF, batch=1, height=H, width=W)
    s.set_prompt(jnp.asarray(ctx))
    lat, _ = s.run_blocks(jnp.asarray(noise), renoise=jnp.asarray(ren), context_last=last)
    outs.append(np.asarray(lat))
    calls.append(s.stats["model_calls"])
  np.testing.assert_array_equal(outs[0], outs[1])
  assert calls == [3 * 5, 3 * 5 - 1]


def test_rolling_allows_videos_longer_than_the_cache_and_plain_cache_refuses(model):
  ctx = context()
  with pytest.raises(UsageError, match="exceed the KV cache"):
    sampling_ar.generate(model, ctx, latents(8), SF, rng=jax.random.key(0))
  roll = sampling_ar.AROptions(frames_per_block=2, cache_frames=6, rolling=True, sink_frames=1)
  res = sampling_ar.generate(model, ctx, latents(8), roll, rng=jax.random.key(0))
  assert res.latents.shape[1] == 8 and bool(jnp.all(jnp.isfinite(res.latents)))


def test_lx_fragments_length_and_calls(model):
  opts = sampling_ar.AROptions(frames_per_block=2, cache_frames=6, steps=LX9[:3], shift=8.0, warp=False,
                               sigma_lookup="exact", update="euler", context_pass=False,
                               long_video="fragments", num_segments=3)
  f = sampling_ar.fragment_frames(6, 2, 3)
  assert f == 6 + 2 * 4
  res = sampling_ar.generate(model, context(), latents(f), opts)
  assert res.latents.shape[1] == f
  # fragment 0: 3 blocks × 3 calls; fragments 1, 2: one recompute call + 2 new blocks × 3 calls.
  assert res.stats["model_calls"] == 9 + 2 * (1 + 6)
  with pytest.raises(UsageError, match="fragments need"):
    sampling_ar.generate(model, context(), latents(f + 1), opts)


# ------------------------------------------------------------------------------------------ attention buckets


def test_kv_bucket_frames_cover_the_buffer():
  assert sampling_ar.kv_bucket_frames(21, 3, 1) == [21]
  assert sampling_ar.kv_bucket_frames(21, 3, 4) == [6, 12, 18, 21]
  assert sampling_ar.kv_bucket_frames(21, 3, 7) == sampling_ar.kv_bucket_frames(21, 3, 50) == list(range(3, 22, 3))
  assert sampling_ar.kv_bucket_frames(20, 3, 3) == [9, 15, 20]      # a partial last block: the buffer's end
  with pytest.raises(UsageError, match="kv_buckets=0"):
    sampling_ar.AROptions(kv_buckets=0).validate()
  with pytest.raises(UsageError, match="non-rolling"):
    sampling_ar.AROptions(frames_per_block=2, cache_frames=6, rolling=True, kv_buckets=2).validate()


def test_kv_buckets_give_the_same_video_with_one_program_per_length(model):
  """Attending a static prefix of the buffer (3 blocks of 2 frames, buckets 2, 4, 6 frames) changes which masked
  slots exist, not which keys are attended: the latents agree with the one-program sampler to float rounding,
  and each block's length is its own program (the 6-frame one is the whole buffer, as with kv_buckets=1)."""
  ctx, noise = context(seed=12), latents(6, seed=13)
  ren = _renoise(SF, 3, seed=14)
  want = sampling_ar.generate(model, ctx, noise, SF, renoise=ren).latents
  opts = dataclasses.replace(SF, kv_buckets=3)
  sampler = sampling_ar.ARSampler(model, opts, batch=1, height=H, width=W)
  assert [sampler.kv_len(e) for e in (2, 4, 6)] == [2 * sampler.tokens_per_frame, 4 * sampler.tokens_per_frame, None]
  jax.clear_caches()
  before = sampling_ar.TRACE_COUNTS["forward"]
  got = sampling_ar.generate(model, ctx, noise, opts, renoise=ren).latents
  assert sampling_ar.TRACE_COUNTS["forward"] - before == 3
  assert max_rel_err(got, want) <= TOL_FP32
  assert not np.array_equal(np.asarray(got), np.zeros_like(np.asarray(got)))


def test_cache_in_carry_is_the_default_and_changes_no_output(model):
  ctx, noise = context(seed=15), latents(6, seed=16)
  ren = _renoise(SF, 3, seed=17)
  assert SF.cache_in_carry is True
  a = sampling_ar.generate(model, ctx, noise, SF, renoise=ren).latents
  b = sampling_ar.generate(model, ctx, noise, dataclasses.replace(SF, cache_in_carry=False), renoise=ren).latents
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
