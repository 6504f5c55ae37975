"""Solver trajectories (through the jitted loop, with CFG) against independent float64 NumPy implementations.

The UniPC and DPM++ references below are written from the spec (wan_model.md §6.3, §6.4) in the structure of the
reference schedulers (Python lists of past outputs, the general R·ρ = b solve), not from wanjax/solvers.
The fake model is a fixed linear map of x and t: v = x·M + (t/1000)·b, with (M, b) differing between the
conditional and unconditional halves so the CFG split order matters.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import max_rel_err
from wanjax import sampling, schedules

# float32 program vs float64 reference (the spec's own float64 re-implementation matched the reference to 1.1e-6).
TOL_MULTISTEP = 2e-6
TOL_ONE_STEP = 2e-6
C = 5
SHAPE = (1, 3, 4, 2, C)   # B F H W C, mutually different sizes
G = 5.0


def _fake_model(seed=0):
  r = np.random.default_rng(seed)
  mats = [0.6 * np.eye(C) + 0.3 * r.standard_normal((C, C)) / np.sqrt(C) for _ in range(2)]
  biases = [r.standard_normal(C) for _ in range(2)]
  return mats, biases


def _denoise(params, x, t, cond):
  del params
  v = jnp.einsum("bfhwc,bcd->bfhwd", x, cond["context"])
  return v + (t / 1000.0)[:, None, None, None, None] * cond["b"][:, None, None, None, :]


def _np_velocity(mats, biases):
  def vel(x, t):
    v_c = x @ mats[0] + t / 1000.0 * biases[0]
    v_u = x @ mats[1] + t / 1000.0 * biases[1]
    return v_u + G * (v_c - v_u)
  return vel


def _run_jax(solver, noise, sigmas, timesteps, mats, biases, rng=None):
  cond = {"context": jnp.asarray(mats[0][None], jnp.float32), "b": jnp.asarray(biases[0][None], jnp.float32)}
  uncond = {"context": jnp.asarray(mats[1][None], jnp.float32), "b": jnp.asarray(biases[1][None], jnp.float32)}
  out = sampling.sample(_denoise, jnp.asarray(noise, jnp.float32), sigmas=sigmas, timesteps=timesteps,
                        solver=solver, cfg_scale=G, cond=cond, uncond=uncond, rng=rng)
  return np.asarray(out, np.float64)


def _lam(s):
  with np.errstate(divide="ignore"):
    return np.log(1.0 - s) - np.log(s)


def unipc_reference(x, vel, sigmas, timesteps):
  """UniPC bh2 predict-x0, order 2, lower_order_final, corrector on (float64)."""
  s = np.asarray(sigmas, np.float64)
  n = len(timesteps)
  outs, last, this_order, lower = [], None, None, 0
  for i in range(n):
    m = x - s[i] * vel(x, float(timesteps[i]))
    if i > 0:  # corrector with the previous predictor's order
      p, m0 = this_order, outs[-1]
      h = _lam(s[i]) - _lam(s[i - 1])
      hh = -h
      phi1 = np.expm1(hh)
      bh = np.expm1(hh)
      rks, d1s = [], []
      for k in range(1, p):
        rk = (_lam(s[i - k - 1]) - _lam(s[i - 1])) / h
        rks.append(rk)
        d1s.append((outs[-(k + 1)] - m0) / rk)
      rks = np.array(rks + [1.0])
      rmat, b, hk, fact = [], [], phi1 / hh - 1.0, 1
      for k in range(1, p + 1):
        rmat.append(rks ** (k - 1))
        b.append(hk * fact / bh)
        fact *= k + 1
        hk = hk / hh - 1.0 / fact
      rho = np.array([0.5]) if p == 1 else np.linalg.solve(np.stack(rmat), np.array(b))
      corr = sum(rho[k] * d1s[k] for k in range(len(d1s)))
      a = 1.0 - s[i]
      x = s[i] / s[i - 1] * last - a * phi1 * m0 - a * bh * (corr + rho[-1] * (m - m0))
    outs = (outs + [m])[-2:]
    this_order = min(2, n - i, lower + 1)
    last = x
    h = _lam(s[i + 1]) - _lam(s[i])
    hh = -h
    phi1 = np.expm1(hh)
    a = 1.0 - s[i + 1]
    x_next = s[i + 1] / s[i] * x - a * phi1 * m
    if this_order == 2:
      r = (_lam(s[i - 1]) - _lam(s[i])) / h
      x_next = x_next - a * np.expm1(hh) * 0.5 * (outs[-2] - m) / r
    x = x_next
    lower = min(lower + 1, 2)
  return x


def dpmpp_reference(x, vel, sigmas, timesteps):
  """DPM-Solver++ 2M midpoint, lower_order_final, final sigma 0 (float64)."""
  s = np.asarray(sigmas, np.float64)
  n = len(timesteps)
  outs, lower = [], 0
  for i in range(n):
    m = x - s[i] * vel(x, float(timesteps[i]))
    outs = (outs + [m])[-2:]
    a = 1.0 - s[i + 1]
    h = _lam(s[i + 1]) - _lam(s[i])
    with np.errstate(divide="ignore"):
      x_next = s[i + 1] / s[i] * x - a * (np.exp(-h) - 1.0) * m
      if lower >= 1 and i != n - 1:
        r0 = (_lam(s[i]) - _lam(s[i - 1])) / h
        x_next = x_next - 0.5 * a * (np.exp(-h) - 1.0) * (1.0 / r0) * (m - outs[-2])
    x = x_next
    lower = min(lower + 1, 2)
  return x


@pytest.mark.parametrize("n,shift", [(8, 5.0), (3, 3.0), (2, 5.0), (1, 5.0)])
def test_unipc_cfg_trajectory_matches_float64_reference(n, shift):
  mats, biases = _fake_model(1)
  noise = np.random.default_rng(2).standard_normal(SHAPE)
  sigmas, timesteps = schedules.unipc_sigmas(n, shift)
  out = _run_jax("unipc", noise, sigmas, timesteps, mats, biases)
  ref = unipc_reference(noise, _np_velocity(mats, biases), sigmas, timesteps)
  err = max_rel_err(out, ref)
  assert err < TOL_MULTISTEP, err


def test_unipc_corrector_matters():
  """Guards the reference: dropping the corrector changes the result far beyond the tolerance."""
  mats, biases = _fake_model(1)
  noise = np.random.default_rng(2).standard_normal(SHAPE)
  sigmas, timesteps = schedules.unipc_sigmas(8, 5.0)
  out = _run_jax("unipc", noise, sigmas, timesteps, mats, biases)
  dpm = dpmpp_reference(noise, _np_velocity(mats, biases), sigmas, timesteps)
  assert max_rel_err(out, dpm) > 100 * TOL_MULTISTEP


@pytest.mark.parametrize("n,shift", [(8, 5.0), (3, 3.0), (1, 5.0)])
def test_dpmpp_cfg_trajectory_matches_float64_reference(n, shift):
  mats, biases = _fake_model(3)
  noise = np.random.default_rng(4).standard_normal(SHAPE)
  sigmas, timesteps = schedules.dpm_sigmas(n, shift)
  out = _run_jax("dpmpp", noise, sigmas, timesteps, mats, biases)
  ref = dpmpp_reference(noise, _np_velocity(mats, biases), sigmas, timesteps)
  err = max_rel_err(out, ref)
  assert err < TOL_MULTISTEP, err


def test_euler_four_step_matches_formula():
  mats, biases = _fake_model(5)
  noise = np.random.default_rng(6).standard_normal(SHAPE)
  sigmas, timesteps = schedules.step_list_sigmas((1000, 750, 500, 250), 5.0)
  out = _run_jax("euler", noise, sigmas, timesteps, mats, biases)
  vel, x = _np_velocity(mats, biases), noise
  for i, t in enumerate(timesteps):
    x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * vel(x, float(t))
  err = max_rel_err(out, x)
  assert err < TOL_ONE_STEP * 4, err


def test_consistency_four_step_matches_formula():
  mats, biases = _fake_model(7)
  noise = np.random.default_rng(8).standard_normal(SHAPE)
  sigmas, timesteps = schedules.step_list_sigmas((1000, 750, 500, 250), 5.0)
  rng = jax.random.key(11)
  out = _run_jax("consistency", noise, sigmas, timesteps, mats, biases, rng=rng)
  vel, x = _np_velocity(mats, biases), noise
  for i, t in enumerate(timesteps):
    x0 = x - float(sigmas[i]) * vel(x, float(t))
    eps = np.asarray(jax.random.normal(jax.random.fold_in(rng, i), SHAPE, jnp.float32), np.float64)
    s_next = float(sigmas[i + 1])
    x = (1 - s_next) * x0 + s_next * eps
  err = max_rel_err(out, x)
  assert err < TOL_ONE_STEP * 4, err
  other = _run_jax("consistency", noise, sigmas, timesteps, mats, biases, rng=jax.random.key(12))
  assert max_rel_err(other, out) > 1e-3, "fresh noise must depend on the key"


def test_stochastic_solver_needs_a_key():
  from wanjax.errors import UsageError
  mats, biases = _fake_model(0)
  sigmas, timesteps = schedules.step_list_sigmas((1000, 500), 5.0)
  with pytest.raises(UsageError, match="rng"):
    _run_jax("consistency", np.zeros(SHAPE), sigmas, timesteps, mats, biases, rng=None)
