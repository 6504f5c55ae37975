"""DMD maths against the spec tables and independent NumPy references (distillation.md §10)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import max_rel_err
from train import dmd
from train import state as st
from wanjax import sampling, schedules

GRID_TOL = 2e-6      # float32 table values vs the spec's printed digits (relative)
EXACT_TOL = 1e-6     # float32 maths vs float64 NumPy


def test_shift_roundtrip_and_grid_table():
  s = np.linspace(0, 1, 101)
  for k in (5.0, 8.0):
    np.testing.assert_allclose(dmd.unshift_sigma(dmd.shift_sigma(s, k), k), s, atol=1e-12)
  t5, t8 = dmd.grid_timesteps(5.0), dmd.grid_timesteps(8.0)
  assert t5.shape == (1000,) and t5[0] == 1000.0
  assert abs(t5[1] - 999.7998) < 1e-3 and abs(t5[999] - 4.98008) < 1e-4 and abs(t8[999] - 7.94439) < 1e-4


def test_warped_lists():
  np.testing.assert_allclose(dmd.warp_timesteps((1000, 750, 500, 250), 5.0), (1000, 937.5, 833.3333, 625),
                             rtol=GRID_TOL)
  np.testing.assert_allclose(dmd.warp_timesteps((1000, 750, 500, 250), 8.0), (1000, 960, 888.8889, 727.2728),
                             rtol=GRID_TOL)
  sig = dmd.SigmaGrid(8.0).sigma(jnp.array([1000.0, 757.0, 522.0]))
  np.testing.assert_allclose(sig, (1.0, 0.7567567, 0.5217391), rtol=GRID_TOL)


def test_grid_lookup_quirk_values():
  g5, g8 = dmd.SigmaGrid(5.0), dmd.SigmaGrid(8.0)
  cases = [(g5, 0, 0.0049801), (g8, 0, 0.0079444), (g5, 20, 0.0196850), (g8, 20, 0.0235064),
           (g5, 980, 0.9799048), (g8, 980, 0.9800570), (g5, 757, 0.7570978)]
  for g, t, want in cases:
    assert abs(float(g.sigma(jnp.float32(t))) - want) < 1e-6, (g.shift, t)
  assert float(dmd.SigmaGrid(5.0, "exact").sigma(jnp.float32(20.0))) == pytest.approx(0.02)
  with pytest.raises(ValueError, match="grid_lookup"):
    dmd.SigmaGrid(5.0, "nearest")


def test_score_timestep_distribution_matches_formula():
  t = np.asarray(dmd.sample_score_timestep(jax.random.PRNGKey(0), 200_000))
  u = np.arange(1000) / 1000.0
  exact = np.clip(1000 * 5 * u / (1 + 4 * u), 20, 980)       # each u equally likely
  assert abs(np.mean(t == 980) - 0.092) < 0.003 and abs(np.mean(t <= 20) - 0.005) < 0.001
  assert abs(t.mean() - exact.mean()) < 1.5 and abs(exact.mean() - 745.7) < 0.1
  # Every sampled value is one of the formula's 1000 values (float32 rounding aside).
  assert np.min(np.abs(t[:2000, None] - exact[None, :]), axis=1).max() < 1e-3


def test_conversions_and_euler_step():
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  x0, eps = jax.random.normal(k[0], (2, 3, 4, 6, 5)), jax.random.normal(k[1], (2, 3, 4, 6, 5))
  t, t2 = jnp.array([700.0, 300.0]), jnp.array([400.0, 100.0])
  g = dmd.SigmaGrid(5.0, "exact")
  x_t = dmd.add_noise(x0, eps, t, g)
  v = eps - x0
  assert max_rel_err(dmd.x0_from_v(x_t, v, t, g), x0) < 10 * EXACT_TOL
  s = (t / 1000)[:, None, None, None, None]
  assert max_rel_err(x_t + (1 - s) * v, eps) < 10 * EXACT_TOL
  s2 = (t2 / 1000)[:, None, None, None, None]
  assert max_rel_err(x_t + (s2 - s) * v, (1 - s2) * x0 + s2 * eps) < 10 * EXACT_TOL


def test_cfg_form():
  one, zero = jnp.ones(3), jnp.zeros(3)
  np.testing.assert_array_equal(dmd.cfg_x0(one, zero, 3.0, "sf"), 4.0)
  np.testing.assert_array_equal(dmd.cfg_x0(one, zero, 4.0, "standard"), 4.0)


def test_dmd_gradient_sign_value_and_derivative():
  key = jax.random.PRNGKey(2)
  x = jax.random.normal(key, (2, 3, 4, 6, 5))
  x0_real = jnp.zeros_like(x)
  x0_fake = jnp.full_like(x, 0.5)                    # x0_fake > x0_real everywhere
  g = dmd.dmd_gradient(x, x0_fake, x0_real)
  norm = np.mean(np.abs(np.asarray(x)), axis=(1, 2, 3, 4), keepdims=True)
  assert max_rel_err(g, np.broadcast_to(0.5 / norm, g.shape)) < EXACT_TOL
  loss, grad = jax.value_and_grad(dmd.dmd_loss_from_gradient)(x, g)
  assert float(loss) == pytest.approx(0.5 * float(jnp.mean(g ** 2)), rel=1e-6)
  assert max_rel_err(grad, g / x.size) < EXACT_TOL
  # One SGD step moves x toward x0_real (away from x0_fake) when the fake is "to the right".
  x_pos = jnp.abs(x) + 1.0
  g = dmd.dmd_gradient(x_pos, x0_fake, x0_real)
  x_new = x_pos - 1e3 * jax.grad(dmd.dmd_loss_from_gradient)(x_pos, g)
  assert float(jnp.mean(jnp.abs(x_new))) < float(jnp.mean(jnp.abs(x_pos)))


def test_normaliser_is_per_sample():
  k = jax.random.split(jax.random.PRNGKey(3), 3)
  x, real, fake = (jax.random.normal(kk, (2, 3, 4, 6, 5)) for kk in k)
  g1 = dmd.dmd_gradient(x, fake, real)
  x2 = x.at[1].set(real[1] + 10 * (x[1] - real[1]))
  g2 = dmd.dmd_gradient(x2, fake, real)
  np.testing.assert_array_equal(g1[0], g2[0])
  assert max_rel_err(g2[1], g1[1] / 10) < 1e-5


@pytest.mark.parametrize("lookup", ["exact", "reference"])
def test_critic_loss_zero_at_true_velocity(lookup):
  s = dmd.DMDSettings(gen_grid=dmd.SigmaGrid(5.0, lookup), score_grid=dmd.SigmaGrid(8.0, lookup))
  x = jax.random.normal(jax.random.PRNGKey(4), (3, 3, 4, 6, 5))
  key = jax.random.PRNGKey(5)
  k_t, k_eps = jax.random.split(key)
  t = dmd.sample_score_timestep(k_t, 3)
  eps = jax.random.normal(k_eps, x.shape)

  def true_critic(x_t, tt):  # v whose x0 round trip (critic grid) gives exactly x
    return (x_t - x) / s.score_grid.sigma(tt)[:, None, None, None, None]
  loss, _ = dmd.critic_flow_loss(true_critic, x, key, s)
  assert float(loss) < 1e-9

  def other(x_t, tt):
    return jnp.tanh(x_t) * 0.3
  loss, _ = dmd.critic_flow_loss(other, x, key, s)
  # Independent float64 NumPy version of §1.7.
  xn, en = np.asarray(x, np.float64), np.asarray(eps, np.float64)
  sg = np.asarray(s.gen_grid.sigma(t), np.float64)[:, None, None, None, None]
  sc = np.asarray(s.score_grid.sigma(t), np.float64)[:, None, None, None, None]
  xt = (1 - sg) * xn + sg * en
  x0 = xt - sc * np.tanh(xt) * 0.3
  want = np.mean(((xt - x0) / sg - (en - xn)) ** 2)
  assert abs(float(loss) - want) / want < 1e-5


def test_update_schedule_600_steps():
  """120 generator updates at s % 5 == 0; EMA created at 200 from the weights then, 80 EMA updates."""
  every, start, decay = 5, 200, 0.99
  tr = st.Trainee(params={"w": jnp.float32(0.0)}, opt_state=(), ema={"w": jnp.float32(-7.0)})
  gen_updates, ema_updates, ref_ema = 0, 0, None
  for s in range(600):
    if ref_ema is None and s >= start:
      ref_ema = float(tr.params["w"])              # reference: copy when the counter reaches 200
    if dmd.is_generator_step(s, every):
      gen_updates += 1
      old = tr.params
      tr = tr.replace(params={"w": jnp.float32(s + 1.0)})    # a "generator update"
      before = float(tr.ema["w"])
      tr = st.ema_step(tr, old, jnp.int32(s), decay=decay, start=start, every=every)
      if ref_ema is not None:
        ref_ema = decay * ref_ema + (1 - decay) * float(tr.params["w"])
        ema_updates += 1
      else:
        assert float(tr.ema["w"]) == before        # untouched before the start
  assert gen_updates == 120 and ema_updates == 80
  assert float(tr.ema["w"]) == pytest.approx(ref_ema, rel=1e-6)


def _toy_denoise(params, x, t):
  return params["a"] * x + params["b"] * (t[:, None, None, None, None] / 1000.0)


@pytest.mark.parametrize("j", [1, 3])
def test_rollout_gradient_only_through_exit_step(j):
  ts = dmd.warp_timesteps((1000, 750, 500, 250), 5.0)
  g = dmd.SigmaGrid(5.0)
  calls = []

  def counting(params, x, t):
    calls.append(1)
    return _toy_denoise(params, x, t)
  params = {"a": jnp.float32(0.3), "b": jnp.float32(-0.2)}
  noise = jax.random.normal(jax.random.PRNGKey(6), (2, 3, 4, 6, 5))
  key = jax.random.PRNGKey(7)

  def loss(p):
    return jnp.sum(dmd.bidirectional_rollout(counting, p, noise, key, j, timesteps=ts, gen_grid=g))
  grad = jax.grad(loss)(params)
  # Reference: run the prefix in NumPy, then differentiate the exit step alone analytically.
  x = np.asarray(noise, np.float64)
  sig = np.asarray(g.sigma(jnp.asarray(ts)), np.float64)
  for i in range(j):
    v = 0.3 * x + -0.2 * ts[i] / 1000
    x0 = x - sig[i] * v
    eps = np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape), np.float64)
    x = (1 - sig[i + 1]) * x0 + sig[i + 1] * eps
  # exit: x0 = x - s (a x + b t/1000) -> d/da = -s x, d/db = -s t/1000
  s = sig[j]
  assert abs(float(grad["a"]) - np.sum(-s * x)) < 1e-3 * max(1, abs(np.sum(s * x)))
  assert abs(float(grad["b"]) - (-s * ts[j] / 1000 * x.size)) < 1e-3 * x.size
  # Traced exit index: one program for all exits gives the same gradient.
  grad_traced = jax.jit(jax.grad(lambda p, jj: jnp.sum(dmd.bidirectional_rollout(
      _toy_denoise, p, noise, key, jj, timesteps=ts, gen_grid=g))))(params, jnp.int32(j))
  assert max_rel_err(grad_traced["a"], grad["a"]) < 1e-5


def test_rollout_prefix_params_get_zero_gradient():
  """A parameter used only in the no-grad prefix steps gets zero gradient; so does the noise input."""
  ts = (1000.0, 937.5, 833.3333, 625.0)
  g = dmd.SigmaGrid(5.0)

  def denoise(params, x, t):
    prefix_only = jnp.where(t[:, None, None, None, None] > 900, params["p"], 0.0)
    return params["a"] * x + prefix_only
  params = {"a": jnp.float32(0.5), "p": jnp.float32(0.7)}
  noise = jax.random.normal(jax.random.PRNGKey(8), (2, 3, 4, 6, 5))
  f = lambda p, n: jnp.sum(dmd.bidirectional_rollout(denoise, p, n, jax.random.PRNGKey(9), 2,  # noqa: E731
                                                      timesteps=ts, gen_grid=g))
  gp, gn = jax.grad(f, argnums=(0, 1))(params, noise)
  assert float(gp["p"]) == 0.0 and float(gp["a"]) != 0.0
  assert float(jnp.max(jnp.abs(gn))) == 0.0


def test_exit_index_uniform_and_generator_loss_gradient():
  js = np.asarray(jax.vmap(lambda k: dmd.sample_exit_index(k, 4))(jax.random.split(jax.random.PRNGKey(10), 40000)))
  assert set(np.unique(js)) == {0, 1, 2, 3} and np.abs(np.bincount(js) / len(js) - 0.25).max() < 0.01
  # generator_dmd_loss with stub networks: dL/dx == G / numel with G from the stubs.
  s = dmd.DMDSettings()
  x = jax.random.normal(jax.random.PRNGKey(11), (2, 3, 4, 6, 5))
  teacher = lambda x_t, t: (0.9 * x_t, 0.2 * x_t)   # noqa: E731
  critic = lambda x_t, t: 0.5 * x_t                 # noqa: E731
  key = jax.random.PRNGKey(12)
  (loss, _), gx = jax.value_and_grad(lambda xx: dmd.generator_dmd_loss(xx, key, teacher=teacher, critic=critic,
                                                                        settings=s), has_aux=True)(x)
  k_t, k_eps = jax.random.split(key)
  t = dmd.sample_score_timestep(k_t, 2)
  x_t = dmd.add_noise(x, jax.random.normal(k_eps, x.shape), t, s.gen_grid)
  sc = s.score_grid.sigma(t)[:, None, None, None, None]
  real = dmd.cfg_x0(x_t - sc * 0.9 * x_t, x_t - sc * 0.2 * x_t, 3.0)
  G = dmd.dmd_gradient(x, x_t - sc * 0.5 * x_t, real)
  assert max_rel_err(gx, G / x.size) < 1e-5
  assert float(loss) == pytest.approx(0.5 * float(jnp.mean(G ** 2)), rel=1e-5)


def test_ode_regression_loss_excludes_clean_frames():
  b, k, f = 2, 3, 4
  traj = jax.random.normal(jax.random.PRNGKey(13), (b, k, f, 4, 6, 5))
  g = dmd.SigmaGrid(5.0, "exact")
  ts = (1000.0, 500.0, 0.0)
  # A denoiser that returns the exact v towards the target makes the loss 0 on every noisy frame.
  target = traj[:, -1]

  def perfect(params, x, t):
    return (x - target) / jnp.maximum(t / 1000, 1e-3)[:, :, None, None, None]
  loss, m = dmd.ode_regression_loss(perfect, {}, traj, jax.random.PRNGKey(14), timesteps=ts, gen_grid=g,
                                    frames_per_block=2)
  assert float(loss) < 1e-10
  zero = lambda params, x, t: jnp.zeros_like(x)    # noqa: E731
  loss, m = dmd.ode_regression_loss(zero, {}, traj, jax.random.PRNGKey(14), timesteps=ts, gen_grid=g,
                                    frames_per_block=2)
  idx = np.repeat(np.asarray(jax.random.randint(jax.random.PRNGKey(14), (b, 2), 0, k)), 2, axis=1)
  x_in = np.take_along_axis(np.asarray(traj), idx[:, None, :, None, None, None], axis=1)[:, 0]
  keep = np.asarray(ts)[idx] != 0
  want = np.mean(((x_in - np.asarray(target)) ** 2)[keep]) if keep.any() else 0.0
  assert abs(float(loss) - want) <= 1e-5 * max(want, 1)


def _toy_cond(params, x, t, cond):
  del cond
  return _toy_denoise(params, x, t)


def test_consistency_sampler_equals_rollout_at_the_last_exit():
  """§10 "LX step-distill": the CM-variant sampler (`wanjax.sampling`, solver "consistency") reproduces the
  training rollout at exit N-1 when both draw the same fresh noise (step i: normal(fold_in(key, i)))."""
  sigmas, ts = schedules.step_list_sigmas((1000, 750, 500, 250), 5.0)
  assert max_rel_err(np.asarray(ts), np.asarray(dmd.warp_timesteps((1000, 750, 500, 250), 5.0))) < GRID_TOL
  params = {"a": jnp.float32(0.35), "b": jnp.float32(-0.4)}
  noise = jax.random.normal(jax.random.PRNGKey(20), (2, 3, 4, 6, 5))
  key = jax.random.PRNGKey(21)
  roll = dmd.bidirectional_rollout(_toy_denoise, params, noise, key, 3, timesteps=tuple(float(t) for t in ts),
                                   gen_grid=dmd.SigmaGrid(5.0))

  def cm(rng):  # one denoise_fn object: the second call reuses the compiled loop
    return sampling.sample(_toy_cond, noise, sigmas=sigmas, timesteps=ts, solver="consistency",
                           cond={"context": jnp.zeros((2, 1, 1))}, rng=rng, params=params)
  err = max_rel_err(cm(key), roll)
  print(f"consistency sampler vs rollout exit 3: rel err {err:.2e}")
  assert err < 10 * EXACT_TOL, err
  # The fresh noise matters (another key gives another sample), so the match is not trivial.
  assert max_rel_err(cm(jax.random.PRNGKey(22)), roll) > 1e-2
