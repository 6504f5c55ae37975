"""Timestep / sigma grids, computed exactly as the reference samplers compute them (NumPy, host side).

Mirrors:
- `FlowUniPCMultistepScheduler.set_timesteps` (Wan2.1 `wan/utils/fm_solvers_unipc.py`; spec `wan_model.md` §6.2):
  `unipc_sigmas`.
- `get_sampling_sigmas` + `FlowDPMSolverMultistepScheduler.set_timesteps` (`wan/utils/fm_solvers.py`; §6.4):
  `dpm_sigmas`.
- LightX2V `WanStepDistillScheduler.set_denoising_timesteps` (spec `distillation.md` §5.2) and the Self-Forcing
  warped denoising list (`distillation.md` §0.3–0.4, same grid): `step_list_sigmas`, `flow_match_grid`.

Every function returns `(sigmas, timesteps)`: `sigmas` float32 `[N+1]` ending in 0 (what the solver uses),
`timesteps` `[N]` (what the DiT is conditioned on). Flow matching: `x_σ = (1−σ)·x0 + σ·ε`, `t = 1000·σ`.
"""

import numpy as np

from wanjax.errors import UsageError

NUM_TRAIN_TIMESTEPS = 1000
# Quirk: the UniPC training sigmas are `1 − linspace(1, 1/1000, 1000)[::-1]` stored as float32, so the
# grid starts at float32(0.999) = 0.9990000128746033, not at 1 (wan_model.md §6.2).
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


def shift_sigmas(sigma, shift):
  """The flow-matching shift warp `s·σ / (1 + (s−1)·σ)`, in the dtype of `sigma`."""
  return shift * sigma / (1 + (shift - 1) * sigma)


def _check(num_steps, shift):
  if int(num_steps) != num_steps or num_steps < 1:
    raise UsageError(f"num_steps={num_steps} must be a positive integer (e.g. 50)")
  if not shift > 0:
    raise UsageError(f"shift={shift} must be > 0 (Wan uses 5.0 for T2V, 3.0 for I2V 480p)")


def unipc_sigmas(num_steps, shift):
  """Original Wan UniPC grid: returns (sigmas float32 [N+1], timesteps int64 [N]).

  σ = linspace(float32(0.999), 0, N+1)[:-1] in float64, shifted; timesteps = int64(σ·1000) (truncation).
  """
  _check(num_steps, shift)
  sigma = np.linspace(UNIPC_SIGMA_MAX, 0.0, int(num_steps) + 1)[:-1]
  sigma = shift_sigmas(sigma, float(shift))
  # Quirk: the DiT sees the truncated integer timestep while the solver uses the exact σ (§6.2).
  timesteps = (sigma * NUM_TRAIN_TIMESTEPS).astype(np.int64)
  sigmas = np.concatenate([sigma, [0.0]]).astype(np.float32)
  return sigmas, timesteps


def dpm_sigmas(num_steps, shift):
  """Wan DPM++ grid (`get_sampling_sigmas`): returns (sigmas float32 [N+1], timesteps int64 [N]).

  σ = linspace(1, 0, N+1)[:N] in float64, shifted (starts at exactly 1, so the first timestep is 1000).
  """
  _check(num_steps, shift)
  sigma = np.linspace(1.0, 0.0, int(num_steps) + 1)[: int(num_steps)]
  sigma = shift_sigmas(sigma, float(shift))
  # The scheduler is then built with shift=1, which leaves σ unchanged (float64 identity).
  timesteps = (sigma * NUM_TRAIN_TIMESTEPS).astype(np.int64)
  sigmas = np.concatenate([sigma, [0.0]]).astype(np.float32)
  return sigmas, timesteps


def _torch_linspace_f32(start, end, steps):
  """float32 linspace with torch's two-sided formula (exact at both ends).

  This is torch's scalar/CUDA formulation; torch's vectorised CPU kernel can differ by 1 ULP at some points (2 after the shift)
  (never at the indices of the standard lists, which are exact multiples of 1/4).
  """
  start, end = np.float32(start), np.float32(end)
  step = np.float32((end - start) / np.float32(steps - 1))
  idx = np.arange(steps)
  half = steps // 2
  lo = start + step * idx.astype(np.float32)
  hi = end - step * (steps - 1 - idx).astype(np.float32)
  return np.where(idx < half, lo, hi).astype(np.float32)


def flow_match_grid(shift):
  """The 1000-point float32 grid σ_i = shift(linspace(1, 0, 1001)[i]), i = 0…999 (distillation.md §0.3).

  Used by LightX2V's step-distill scheduler and by Self-Forcing's `FlowMatchScheduler(extra_one_step=True)`.
  """
  if not shift > 0:
    raise UsageError(f"shift={shift} must be > 0 (LightX2V uses 5.0)")
  base = _torch_linspace_f32(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1)[:-1]
  return shift_sigmas(base, np.float32(shift)).astype(np.float32)


def step_list_sigmas(steps=(1000, 750, 500, 250), shift=5.0):
  """Few-step distilled list (LightX2V 4-step; Self-Forcing `warp_denoising_step`).

  Returns (sigmas float32 [N+1] ending in 0, timesteps float32 [N] = 1000·σ, passed to the DiT as floats).
  Each step s picks grid index 1000 − s (s = 0 maps to σ = 0), i.e. σ = shift(s/1000) in float32:
  (1000, 750, 500, 250) at shift 5 gives σ = [1.0, 0.9375, 0.8333, 0.625].
  """
  steps = [int(s) for s in steps]
  if not steps:
    raise UsageError("timesteps=() is empty; give a decreasing list such as (1000, 750, 500, 250)")
  bad = [s for s in steps if not 0 <= s <= NUM_TRAIN_TIMESTEPS]
  if bad:
    raise UsageError(f"timesteps {bad} out of range; each step must be in [0, {NUM_TRAIN_TIMESTEPS}]")
  if any(a <= b for a, b in zip(steps, steps[1:])):
    raise UsageError(f"timesteps={tuple(steps)} must be strictly decreasing, e.g. (1000, 750, 500, 250)")
  grid = np.concatenate([flow_match_grid(shift), np.zeros(1, np.float32)])  # index 1000 → appended 0
  sigma = grid[[NUM_TRAIN_TIMESTEPS - s for s in steps]]
  timesteps = (sigma * np.float32(NUM_TRAIN_TIMESTEPS)).astype(np.float32)
  sigmas = np.concatenate([sigma, [np.float32(0.0)]]).astype(np.float32)
  return sigmas, timesteps


def nearest_grid_sigma(t, shift):
  """σ of the grid point whose 1000·σ is nearest to timestep `t` (Self-Forcing's lookup, distillation.md §0.3)."""
  grid = flow_match_grid(shift)
  t = np.asarray(t, np.float32)
  idx = np.argmin(np.abs(grid[None, :] * np.float32(NUM_TRAIN_TIMESTEPS) - t.reshape(-1, 1)), axis=1)
  return grid[idx].reshape(t.shape)


SCHEDULES = ("unipc", "dpm", "step_list")


def make_schedule(kind, *, num_steps=0, shift=5.0, steps=()):
  """Dispatches on `kind` ('unipc' | 'dpm' | 'step_list'); returns (sigmas float32 [N+1], timesteps [N])."""
  if kind == "unipc":
    return unipc_sigmas(num_steps, shift)
  if kind == "dpm":
    return dpm_sigmas(num_steps, shift)
  if kind == "step_list":
    return step_list_sigmas(steps, shift)
  raise UsageError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
