"""The jitted loop with the real tiny DiT: one compiled program per shape, CFG batch == two separate forwards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infer.demo import random_model
from tests.conftest import max_rel_err
from wanjax import sampling, schedules
from wanjax.dit.config import get_config
from wanjax.dit.model import WanDiT

TOL_CFG_BATCH = 1e-5   # batch of two vs two B=1 forwards, float32
LATENT = (1, 2, 4, 6, 16)


@pytest.fixture(scope="module")
def dit():
  # Every parameter random (the reference init zeroes the head, which would make v independent of x and text).
  return sampling.model_denoiser(_tiny(3))


def _tiny(seed):
  return random_model(lambda: WanDiT(get_config("tiny"), policy="float32", rngs=nnx.Rngs(0)), seed)


def _ctx(seed):
  cfg = get_config("tiny")
  return jnp.asarray(np.random.default_rng(seed).standard_normal((1, cfg.text_len, cfg.text_dim)), jnp.float32)


def test_traces_once_for_two_prompts(dit):
  denoise_fn, params = dit
  sigmas, timesteps = schedules.unipc_sigmas(3, 5.0)
  noise = jax.random.normal(jax.random.key(0), LATENT)
  before = sampling._loop_jit._cache_size()
  outs = [sampling.sample(denoise_fn, noise, sigmas=sigmas, timesteps=timesteps, solver="unipc", cfg_scale=g,
                          cond={"context": _ctx(seed)}, uncond={"context": _ctx(99)}, params=params)
          for seed, g in ((1, 5.0), (2, 4.0))]
  assert sampling._loop_jit._cache_size() - before == 1
  assert max_rel_err(outs[0], outs[1]) > 1e-4, "different prompts must give different latents"
  # A model with the same architecture but other weights reuses the program as well (params are arguments).
  other_fn, other_params = sampling.model_denoiser(_tiny(4))
  sampling.sample(other_fn, noise, sigmas=sigmas, timesteps=timesteps, solver="unipc", cfg_scale=5.0,
                  cond={"context": _ctx(1)}, uncond={"context": _ctx(99)}, params=other_params)
  assert sampling._loop_jit._cache_size() - before == 1


def test_cfg_batch_of_two_equals_separate_forwards(dit):
  denoise_fn, params = dit
  sigmas, timesteps = schedules.step_list_sigmas((1000, 750), 5.0)
  noise = jax.random.normal(jax.random.key(1), LATENT)
  c, u, g = _ctx(5), _ctx(6), 4.5
  out = sampling.sample(denoise_fn, noise, sigmas=sigmas, timesteps=timesteps, solver="euler", cfg_scale=g,
                        cond={"context": c}, uncond={"context": u}, params=params)
  fwd = jax.jit(denoise_fn)
  x = np.asarray(noise, np.float64)
  for i, t in enumerate(timesteps):
    tt = jnp.full((1,), t, jnp.float32)
    xj = jnp.asarray(x, jnp.float32)
    v_c = np.asarray(fwd(params, xj, tt, {"context": c}), np.float64)
    v_u = np.asarray(fwd(params, xj, tt, {"context": u}), np.float64)
    x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * (v_u + g * (v_c - v_u))
  err = max_rel_err(out, x)
  assert err < TOL_CFG_BATCH, err


def test_progress_hook_sees_every_step(dit):
  denoise_fn, params = dit
  sigmas, timesteps = schedules.unipc_sigmas(3, 5.0)
  seen = []
  with sampling.progress_hook(seen.append):
    jax.block_until_ready(sampling.sample(
        denoise_fn, jnp.zeros(LATENT), sigmas=sigmas, timesteps=timesteps, solver="unipc", cfg_scale=1.0,
        cond={"context": _ctx(1)}, params=params))
  assert sorted(seen) == [0, 1, 2]
