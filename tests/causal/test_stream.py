"""Streaming decode and CausVid multi-rollout long videos (spec distillation.md §4.4, §10 "Inference end to end")
with a tiny random VAE, fp32 CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.causal.helpers import context, latents, random_dit, random_vae
from tests.conftest import max_rel_err
from wanjax import sampling_ar

TOL_FP32 = 1e-5
CV3 = dict(frames_per_block=3, cache_frames=6, steps=(1000, 757, 522), shift=8.0, warp=False)


@pytest.fixture(scope="module")
def models():
  return random_dit(seed=0), random_vae(seed=3)


@pytest.mark.slow
def test_stream_decoder_equals_whole_clip_decode(models):
  _, vae = models
  z = jnp.asarray(latents(6, seed=20))
  dec = sampling_ar.StreamDecoder(vae)
  frames = jnp.concatenate([dec.push(z[:, :3]), dec.push(z[:, 3:])], axis=1)
  ref = vae.decode(z)
  assert frames.shape == ref.shape == (1, 21, 32, 48, 3)
  assert max_rel_err(frames, ref) <= TOL_FP32


def test_generate_streams_all_frames_in_order(models):
  dit, vae = models
  got = []
  opts = sampling_ar.AROptions(**CV3)
  res = sampling_ar.generate(dit, context(), latents(6, seed=21), opts, rng=jax.random.key(0), vae=vae,
                             on_frames=got.append)
  assert [g.shape[1] for g in got] == [1 + 4 * 2, 4 * 3]         # one chunk per finished block
  assert res.num_pixel_frames == 21 and res.stats["ttff_s"] <= res.stats["total_s"]
  assert max_rel_err(jnp.concatenate(got, axis=1), vae.decode(res.latents)) <= TOL_FP32


def test_frames_are_handed_over_after_the_next_block_is_queued(models, monkeypatch):
  """`on_frames` gets a block's frames only once the next block's model calls are queued (so a callback that waits
  for them, or writes them out, never leaves the device idle), the last block's at the end; all frames, in order.
  ttff_s is when the first frames are computed: they are ready when the callback first runs."""
  dit, vae = models
  calls, seen = [0], []
  forward = sampling_ar._forward

  def counted(*a, **k):
    calls[0] += 1
    return forward(*a, **k)

  monkeypatch.setattr(sampling_ar, "_forward", counted)

  def on_frames(frames):
    seen.append((calls[0], frames.shape[1], frames.is_ready()))

  opts = sampling_ar.AROptions(**dict(CV3, cache_frames=9))
  res = sampling_ar.generate(dit, context(), latents(9, seed=23), opts, rng=jax.random.key(0), vae=vae,
                             on_frames=on_frames)
  # 3 blocks of 3 steps; a context pass after blocks 0 and 1. Block 0's frames wait for block 1's 3 + 1 calls.
  assert [(c, n) for c, n, _ in seen] == [(8, 9), (11, 12), (11, 12)], seen
  assert seen[0][2] and 0 < res.stats["ttff_s"] <= res.stats["total_s"]
  assert res.num_pixel_frames == 33 and res.stats["model_calls"] == 11


@pytest.mark.slow
def test_causvid_rollouts_chain_through_reencoded_overlap(models):
  dit, vae = models
  n, per, o = 3, 6, 3
  opts = sampling_ar.AROptions(**CV3, long_video="rollouts", num_segments=n, overlap_frames=o)
  got = []
  res = sampling_ar.generate(dit, context(), latents(n * per, seed=22), opts, rng=jax.random.key(1), vae=vae,
                             on_frames=got.append)
  drop = 4 * (o - 1) + 1
  per_pixels = 1 + 4 * (per - 1)
  assert res.num_pixel_frames == n * (per_pixels - drop)          # 72·n for 21-frame rollouts (216 for 3)
  # Rollout 0: 2 blocks × (3 + 1) calls; later rollouts: 1 teacher-forced call + 1 block × 4; each rollout
  # skips the context pass of its last block (the next rollout resets the cache).
  assert res.stats["model_calls"] == 8 + 2 * 5 - 3
  lat = np.asarray(res.latents)
  for k in range(n - 1):
    prev = lat[:, k * per:(k + 1) * per]
    pixel = vae.decode(jnp.asarray(prev))[:, -drop:-drop + 1]
    want = np.concatenate([np.asarray(vae.encode(pixel)), prev[:, per - (o - 1):]], axis=1)
    assert max_rel_err(lat[:, (k + 1) * per:(k + 1) * per + o], want) <= TOL_FP32
  # Streamed frames are each rollout's decode minus its last `drop` frames, in order.
  ref = np.concatenate([np.asarray(vae.decode(jnp.asarray(lat[:, k * per:(k + 1) * per])))[:, :-drop]
                        for k in range(n)], axis=1)
  assert max_rel_err(np.concatenate([np.asarray(g) for g in got], axis=1), ref) <= TOL_FP32
