"""DMD / DMD2 maths as pure functions: sigma grids, timestep sampling, rollout, generator and critic losses.

Mirrors Self-Forcing (spec `distillation.md` §1): `utils/scheduler.py` (`FlowMatchScheduler` grid and its
nearest-grid lookup, §0.3), `model/dmd.py` (`compute_distribution_matching_loss`, `_compute_kl_grad`,
`critic_loss`, §1.5 and §1.7), `pipeline/bidirectional_training.py` of Self-Forcing-Plus (the bidirectional
rollout with a random exit step, §3.2), and the ODE regression of `model/ode_regression.py` (§2.2).

Nothing here knows about models: a network is a function `denoise(params, x, t) -> v` (flow prediction,
float32) with the conditioning already bound. Latents are channels-last `[B, F, H, W, C]`.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from wanjax import schedules
from wanjax.errors import UsageError

NUM_TRAIN_TIMESTEPS = 1000
GRID_LOOKUPS = ("reference", "exact")
CFG_FORMS = ("sf", "standard")


# ------------------------------------------------------------------------------------------------ sigma grid

def shift_sigma(s, shift):
  """Flow-matching shift warp `k s / (1 + (k - 1) s)` (§0.2); works on NumPy and JAX arrays."""
  return shift * s / (1 + (shift - 1) * s)


def unshift_sigma(s, shift):
  """Inverse of `shift_sigma`."""
  return s / (shift - (shift - 1) * s)


def grid_timesteps(shift) -> np.ndarray:
  """`T^k_i = 1000 sigma^k_i`, i = 0..999: the float32 grid of `FlowMatchScheduler(shift, extra_one_step=True)`."""
  return (schedules.flow_match_grid(shift) * np.float32(NUM_TRAIN_TIMESTEPS)).astype(np.float32)


def warp_timesteps(steps, shift) -> tuple:
  """`warp_denoising_step`: each s becomes `T^k_{1000 - s}`, index 1000 meaning the appended 0 (§0.4)."""
  return tuple(float(t) for t in schedules.step_list_sigmas(tuple(steps), shift)[1])


@dataclasses.dataclass(frozen=True)
class SigmaGrid:
  """How a timestep t in [0, 1000] becomes sigma.

  lookup="reference": nearest point of the shift-`shift` grid (`argmin_i |T_i - t|`, first index on ties), as
  every `add_noise` and v<->x0 conversion of the reference does. lookup="exact": sigma = t / 1000.
  """
  shift: float = 5.0
  lookup: str = "reference"

  def __post_init__(self):
    if self.lookup not in GRID_LOOKUPS:
      raise UsageError(f"grid_lookup={self.lookup!r}; valid: {', '.join(GRID_LOOKUPS)}")

  def sigma(self, t):
    """t [...] float -> sigma [...] float32."""
    t = jnp.asarray(t, jnp.float32)
    if self.lookup == "exact":
      return t / NUM_TRAIN_TIMESTEPS
    # Quirk: §0.3 nearest-grid lookup; t = 0 maps to the last grid point (sigma 0.00498 at shift 5).
    table = jnp.asarray(grid_timesteps(self.shift))
    idx = jnp.argmin(jnp.abs(table - t[..., None]), axis=-1)
    return table[idx] / NUM_TRAIN_TIMESTEPS


def _bcast(s, x):
  """Per-sample [B] (or per-frame [B, F]) sigma broadcast against x [B, F, H, W, C]."""
  s = jnp.asarray(s, jnp.float32)
  return s.reshape(s.shape + (1,) * (x.ndim - s.ndim))


def add_noise(x0, eps, t, grid: SigmaGrid):
  """x_t = (1 - sigma) x0 + sigma eps, sigma looked up from t ([B] or [B, F])."""
  s = _bcast(grid.sigma(t), x0)
  return ((1 - s) * x0.astype(jnp.float32) + s * eps.astype(jnp.float32)).astype(x0.dtype)


def x0_from_v(x_t, v, t, grid: SigmaGrid):
  """x0 = x_t - sigma v, in float32 (the reference converts in float64)."""
  return x_t.astype(jnp.float32) - _bcast(grid.sigma(t), x_t) * v.astype(jnp.float32)


def v_from_x0(x_t, x0, t, grid: SigmaGrid):
  """v = (x_t - x0) / sigma, in float32."""
  return (x_t.astype(jnp.float32) - x0.astype(jnp.float32)) / _bcast(grid.sigma(t), x_t)


# ------------------------------------------------------------------------------------------------ sampling

def sample_score_timestep(key, batch, *, shift=5.0, min_t=20.0, max_t=980.0, num=NUM_TRAIN_TIMESTEPS):
  """One DMD/critic score timestep per sample (§1.5 step 1): u ~ U{0..num-1},
  t = clamp(num * shift(u / num), min_t, max_t). Returns [B] float32."""
  u = jax.random.randint(key, (batch,), 0, num).astype(jnp.float32) / num
  t = num * shift_sigma(u, shift) if shift > 1 else num * u
  return jnp.clip(t, min_t, max_t)


def sample_exit_index(key, num_steps, *, last_step_only=False):
  """Exit step j ~ U{0..N-1}, one draw per global step (a replicated scalar: every shard sees the same j)."""
  if last_step_only:
    return jnp.asarray(num_steps - 1, jnp.int32)
  return jax.random.randint(key, (), 0, num_steps, dtype=jnp.int32)


def cfg_x0(x0_cond, x0_uncond, scale, form="sf"):
  """Teacher guidance. Quirk: §0.5 — SF form `x_c + g (x_c - x_u)` equals standard CFG at g + 1."""
  if form == "sf":
    return x0_cond + scale * (x0_cond - x0_uncond)
  if form == "standard":
    return x0_uncond + scale * (x0_cond - x0_uncond)
  raise UsageError(f"cfg_form={form!r}; valid: {', '.join(CFG_FORMS)}")


# ------------------------------------------------------------------------------------------------ rollout

# A rollout maps (denoise, params, noise, key, exit_index) to the generator's sample x0_hat. The bidirectional
# one is below; a causal (block-wise KV-cache) rollout plugs in with the same signature.
Rollout = Callable


def bidirectional_rollout(denoise, params, noise, key, exit_index, *, timesteps, gen_grid: SigmaGrid):
  """SF+ backward simulation on the whole video as one block (§3.2, §1.4 without cache).

  Steps i < exit_index run on stop-gradient params and re-noise with fresh noise to sigma(t_{i+1}); the exit
  step runs with gradients (w.r.t. params only: its input is stop-gradient, as the reference produces it under
  no_grad). `exit_index` may be traced: the no-grad prefix is a `fori_loop` with a dynamic trip count, so one
  compiled program covers every exit. denoise(params, x [B,F,H,W,C], t [B]) -> v. Returns x0_hat (float32).
  """
  ts = jnp.asarray(timesteps, jnp.float32)                               # [N]
  sig_next = jnp.concatenate([gen_grid.sigma(ts[1:]), jnp.zeros((1,), jnp.float32)])
  frozen = jax.lax.stop_gradient(params)
  batch = noise.shape[0]

  def step(i, x):
    t = jnp.full((batch,), ts[i])
    x0 = x0_from_v(x, denoise(frozen, x, t), t, gen_grid)
    eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
    s = sig_next[i]
    return ((1 - s) * x0 + s * eps).astype(x.dtype)

  x = jax.lax.stop_gradient(jax.lax.fori_loop(0, exit_index, step, noise))
  t = jnp.full((batch,), ts[exit_index])
  return x0_from_v(x, denoise(params, x, t), t, gen_grid)


# ------------------------------------------------------------------------------------------------ DMD loss

def dmd_gradient(x, x0_fake, x0_real):
  """G = (x0_fake - x0_real) / mean_{F,H,W,C} |x - x0_real| (per-sample normaliser, §1.5 step 5)."""
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  norm = jnp.mean(jnp.abs(x - x0_real), axis=tuple(range(1, x.ndim)), keepdims=True)
  return jnp.nan_to_num((x0_fake - x0_real) / norm)


def dmd_loss_from_gradient(x, grad):
  """0.5 mean((x - sg(x - G))^2): the value is 0.5 mean(G^2) and dL/dx = G / numel."""
  x = x.astype(jnp.float32)
  return 0.5 * jnp.mean(jnp.square(x - jax.lax.stop_gradient(x - grad)))


@dataclasses.dataclass(frozen=True)
class DMDSettings:
  """Typed DMD objective settings (built by the CLI from `config.dmd`)."""
  timesteps: tuple = (1000.0, 937.5, 833.3333, 625.0)   # as passed to the network (already warped)
  gen_grid: SigmaGrid = SigmaGrid(5.0)     # generator wrapper: add_noise and critic x0 -> v (§0.3)
  score_grid: SigmaGrid = SigmaGrid(8.0)   # teacher/critic wrappers: their own v -> x0 (default shift 8)
  score_shift: float = 5.0
  min_t: float = 20.0
  max_t: float = 980.0
  guidance_scale: float = 3.0
  cfg_form: str = "sf"
  last_step_only: bool = False


def generator_dmd_loss(x, key, *, teacher, critic, settings: DMDSettings):
  """DMD generator loss on sample x [B,F,H,W,C] (with gradient).

  teacher(x_t, t) -> (v_cond, v_uncond); critic(x_t, t) -> v (conditional only, fake guidance 0).
  Returns (loss, metrics).
  """
  k_t, k_eps = jax.random.split(key)
  t = sample_score_timestep(k_t, x.shape[0], shift=settings.score_shift, min_t=settings.min_t,
                            max_t=settings.max_t)
  eps = jax.random.normal(k_eps, x.shape, jnp.float32)
  x_t = jax.lax.stop_gradient(add_noise(x, eps, t, settings.gen_grid))
  v_fake = critic(x_t, t)
  v_cond, v_uncond = teacher(x_t, t)
  x0_fake = x0_from_v(x_t, v_fake, t, settings.score_grid)
  x0_real = cfg_x0(x0_from_v(x_t, v_cond, t, settings.score_grid),
                   x0_from_v(x_t, v_uncond, t, settings.score_grid),
                   settings.guidance_scale, settings.cfg_form)
  grad = jax.lax.stop_gradient(dmd_gradient(x, x0_fake, x0_real))
  loss = dmd_loss_from_gradient(x, grad)
  return loss, {"dmd/grad_mean_abs": jnp.mean(jnp.abs(grad)), "dmd/score_t_mean": jnp.mean(t)}


def critic_flow_loss(critic, x_gen, key, settings: DMDSettings):
  """Critic (fake score) flow-matching loss on a stop-gradient generator sample (§1.7).

  critic(x_t, t) -> v. The critic's x0 (its own grid) is converted back to v on the generator grid, as the
  reference does, and regressed to eps - x. Returns (loss, metrics).
  """
  x_gen = jax.lax.stop_gradient(x_gen.astype(jnp.float32))
  k_t, k_eps = jax.random.split(key)
  t = sample_score_timestep(k_t, x_gen.shape[0], shift=settings.score_shift, min_t=settings.min_t,
                            max_t=settings.max_t)
  eps = jax.random.normal(k_eps, x_gen.shape, jnp.float32)
  x_t = add_noise(x_gen, eps, t, settings.gen_grid)
  x0_phi = x0_from_v(x_t, critic(x_t, t), t, settings.score_grid)
  v_hat = v_from_x0(x_t, x0_phi, t, settings.gen_grid)
  loss = jnp.mean(jnp.square(v_hat - (eps - x_gen)))
  return loss, {"critic/score_t_mean": jnp.mean(t)}


def is_generator_step(step, critic_steps_per_generator_step):
  """SF cadence (§1.3): the counter counts critic updates; the generator updates when s % ratio == 0."""
  return step % critic_steps_per_generator_step == 0


# ------------------------------------------------------------------------------------------------ flow matching

def flow_matching_loss(denoise, params, x0, key, *, shift=1.0):
  """Plain flow matching: sigma = shift(u), u ~ U(0, 1); x_t = (1 - sigma) x0 + sigma eps;
  loss = mean((v - (eps - x0))^2). denoise(params, x, t [B]) -> v."""
  k_u, k_eps = jax.random.split(key)
  b = x0.shape[0]
  sig = shift_sigma(jax.random.uniform(k_u, (b,), jnp.float32), shift)
  eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
  x0 = x0.astype(jnp.float32)
  x_t = (1 - _bcast(sig, x0)) * x0 + _bcast(sig, x0) * eps
  v = denoise(params, x_t, sig * NUM_TRAIN_TIMESTEPS)
  return jnp.mean(jnp.square(v - (eps - x0))), {"fm/sigma_mean": jnp.mean(sig)}


# ------------------------------------------------------------------------------------------------ ODE init

def ode_regression_loss(denoise, params, trajectory, key, *, timesteps, gen_grid: SigmaGrid,
                        frames_per_block=None):
  """ODE-init regression (§2.2). trajectory [B, K, F, H, W, C]: the teacher latents at `timesteps` [K] (the
  last entry 0, the clean target). Per block a random index k_b; inputs gathered per frame; one forward with
  per-frame timesteps; MSE of x0 against trajectory[:, K-1] over frames whose timestep is not 0.
  denoise(params, x, t [B, F]) -> v. frames_per_block=None: one index per sample (bidirectional).
  """
  b, k, f = trajectory.shape[:3]
  fpb = frames_per_block or f
  if f % fpb:
    raise UsageError(f"frames={f} is not a multiple of frames_per_block={fpb}")
  idx = jax.random.randint(key, (b, f // fpb), 0, k)                    # [B, F/fpb]
  idx = jnp.repeat(idx, fpb, axis=1)                                     # [B, F]
  ts = jnp.asarray(timesteps, jnp.float32)[idx]                          # [B, F]
  x_in = jnp.take_along_axis(trajectory, idx[:, None, :, None, None, None], axis=1)[:, 0]
  x_in = x_in.astype(jnp.float32)
  x0 = x0_from_v(x_in, denoise(params, x_in, ts), ts, gen_grid)
  target = trajectory[:, -1].astype(jnp.float32)
  keep = _bcast((ts != 0).astype(jnp.float32), x0)                      # [B, F, 1, 1, 1]
  per_frame = np.prod(x0.shape[2:])
  denom = jnp.maximum(jnp.sum(keep) * per_frame, 1.0)
  return jnp.sum(keep * jnp.square(x0 - target)) / denom, {"ode/frames_kept": jnp.sum(keep)}
