"""UniPC multistep, bh2, predict-x0, order 2, as one pure step function (spec `wan_model.md` §6.3).

Mirrors `FlowUniPCMultistepScheduler.step` (Wan2.1 `wan/utils/fm_solvers_unipc.py`, itself diffusers'
`UniPCMultistepScheduler` for flow prediction) with Wan's defaults: solver_order=2, solver_type='bh2',
predict_x0=True, lower_order_final=True, final_sigmas_type='zero', corrector on every step but the first.

The Python-side scheduler state becomes a fixed-shape pytree so the loop can be a `lax.fori_loop`:
`m1`/`m2` are the converted outputs x0 of steps i−1 and i−2 and `last` the (corrected) sample the previous
predictor started from. The step orders are functions of i alone: the predictor is first order at i = 0 and
i = N−1 (warm-up and lower_order_final), second order otherwise; the corrector at step i uses the previous
predictor's order, so it is first order at i = 1 and second order from i = 2.

Precision: all scalar maths (σ, α, λ, expm1, the 2×2 solve) runs in float32 inside the program, as the
reference does with float32 torch scalars; latents are float32.
"""

import jax.numpy as jnp


def init_state(x):
  """Empty history for a latent shaped like `x` (float32)."""
  z = jnp.zeros(x.shape, jnp.float32)
  return {"m1": z, "m2": z, "last": z}


def _lam(sigma):
  # λ = log α − log σ with α = 1 − σ; +inf at σ = 0 (last step), −inf at σ = 1.
  return jnp.log(1.0 - sigma) - jnp.log(sigma)


def step(state, x, v, i, sigmas, key=None):
  """One UniPC step: x_i (before correction), model velocity v_i → (x_{i+1}, new state).

  `i` is the step index (traced int32), `sigmas` float32 [N+1] ending in 0.
  """
  del key  # deterministic
  n = sigmas.shape[0] - 1
  f32 = jnp.float32
  x = x.astype(f32)
  v = v.astype(f32)
  i = jnp.asarray(i, jnp.int32)
  sig = lambda j: sigmas[jnp.clip(j, 0, n)].astype(f32)

  s_i = sig(i)
  m = x - s_i * v  # convert_model_output: x0 prediction
  lam_i = _lam(s_i)
  a_i = 1.0 - s_i

  # ---- corrector (UniC-bh2) for x_i, using m_i; skipped at i = 0 ----
  m1, m2, last = state["m1"], state["m2"], state["last"]
  use_corr = i > 0
  c_order2 = i >= 2
  s_p1 = sig(i - 1)
  lam_p1, lam_p2 = _lam(s_p1), _lam(sig(i - 2))
  h = jnp.where(use_corr, lam_i - lam_p1, 1.0)
  hh = -h
  phi1 = jnp.expm1(hh)
  b_h = phi1  # bh2: B(h) = expm1(−h)
  g1 = phi1 / hh - 1.0
  g2 = g1 / hh - 0.5
  # ρ = solve([[1, 1], [r, 1]], [g1/B, 2·g2/B]) in closed form.
  r_c = jnp.where(c_order2, (lam_p2 - lam_p1) / h, 0.0)
  b0, b1 = g1 / b_h, 2.0 * g2 / b_h
  det = jnp.where(c_order2, 1.0 - r_c, 1.0)
  rho0 = jnp.where(c_order2, (b0 - b1) / det, 0.0)
  rho_last = jnp.where(c_order2, (b1 - r_c * b0) / det, 0.5)  # order 1: ρ = [0.5]
  ratio_c = jnp.where(use_corr, s_i / s_p1, 1.0)
  corr_res = rho0 * ((m2 - m1) / jnp.where(c_order2, r_c, 1.0))  # ρ0·D1; 0 at order 1
  x_c = ratio_c * last - a_i * phi1 * m1 - a_i * b_h * (corr_res + rho_last * (m - m1))
  x = jnp.where(use_corr, x_c, x)

  # ---- predictor (UniP-bh2) from the corrected x_i ----
  p_order2 = (i > 0) & (i < n - 1)
  s_n = sig(i + 1)
  a_n = 1.0 - s_n
  h = _lam(s_n) - lam_i
  hh = -h
  phi1 = jnp.expm1(hh)  # at σ_{i+1} = 0: h = +inf, φ1 = −1, so x_{i+1} = m_i exactly
  b_h = phi1
  r_p = jnp.where(p_order2, (lam_p1 - lam_i) / h, 1.0)
  d1 = jnp.where(p_order2, 0.5, 0.0) * ((m1 - m) / r_p)  # ρ_p fixed to 0.5 for order 2
  x_next = (s_n / s_i) * x - a_n * phi1 * m - a_n * b_h * d1
  return x_next, {"m1": m, "m2": m1, "last": x}
