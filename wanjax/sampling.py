"""THE denoise loop: one jitted program per shape, `lax.fori_loop` over the steps, CFG as a batch of two.

Mirrors the sampling loops of the reference (`wan/text2video.py` / `wan/image2video.py` `generate`, spec
`wan_model.md` §6.5–6.6, and LightX2V's step-distill runner, `distillation.md` §5.2) with a pluggable solver
(`wanjax.solvers`) and conditioning:

  for i in range(N):
    v = denoise_fn(params, x, t_i, cond)                 # CFG: one call on [x; x] with [cond; uncond]
    v = v_u + g·(v_c − v_u)                              # float32, as the reference
    x, state = solver.step(state, x, v, i, sigmas, fold_in(rng, i))

`denoise_fn(params, x [B,F,H,W,C], t [B] float32, cond dict) -> v [B,F,H,W,C]` is a hashable pure function
(its identity is part of the compile-cache key); `params` is a pytree argument of the program, never a baked-in
constant, so new weights or new prompts of the same shape reuse the compiled program. Differences from the
reference kept on purpose: the reference runs cond and uncond as two B=1 forwards (§1.13) — one batch of two
gives the same result; its initial noise comes from torch's CUDA generator (inject it via `noise`).
"""

import dataclasses
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax import sharding as shd
from wanjax.errors import UsageError
from wanjax.solvers import Solver, get_solver

_LATENT_AXES = ("batch", "frames", "height", "width", "channels")


# ------------------------------------------------------------------------------------------ denoisers

@dataclasses.dataclass(frozen=True)
class ModelDenoiser:
  """`denoise_fn` for an NNX model split once as `(graphdef, (params, rest))`; merges inside the program.

  Equal graphdefs compare equal, so two models of the same architecture share one compiled sampler.
  `cond` keys are passed as keyword arguments after `context` (e.g. `clip_fea`, `y` for I2V).
  """
  graphdef: Any

  def __call__(self, params, x, t, cond):
    model = nnx.merge(self.graphdef, *params)
    cond = dict(cond)
    context = cond.pop("context")
    return model(x, t, context, **cond)


def model_denoiser(model):
  """Splits an NNX model (e.g. `WanDiT`) once: returns `(denoise_fn, params)` for `sample(..., params=...)`."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return ModelDenoiser(graphdef), (params, rest)


# ------------------------------------------------------------------------------------------ progress

# Host-side progress hook. The callback compiled into the program is this module-level function, so a cached
# program reports to whatever hook is installed at run time (never to the one present at trace time).
_HOOK_LOCK = threading.Lock()
_HOOK = [None]


def _tick(i):
  with _HOOK_LOCK:
    hook = _HOOK[0]
  if hook is not None:
    hook(int(i))


class progress_hook:
  """Context manager installing `fn(step_index)` as the per-step progress callback (e.g. tqdm.update)."""

  def __init__(self, fn):
    self.fn = fn

  def __enter__(self):
    with _HOOK_LOCK:
      self.prev, _HOOK[0] = _HOOK[0], self.fn
    return self

  def __exit__(self, *exc):
    jax.effects_barrier()  # unordered callbacks of the finished program have all run
    with _HOOK_LOCK:
      _HOOK[0] = self.prev


# ------------------------------------------------------------------------------------------ the loop

def _concat(a, b):
  return jnp.concatenate([a, b], axis=0)


def _loop(denoise_fn, solver: Solver, use_cfg: bool, params, noise, sigmas, timesteps, cond, uncond,
          cfg_scale, rng):
  """The traced program: noise [B,F,H,W,C] → final latent float32 (see module docstring)."""
  n = timesteps.shape[0]
  b = noise.shape[0]
  x = shd.constrain(noise.astype(jnp.float32), _LATENT_AXES)
  sigmas = sigmas.astype(jnp.float32)
  timesteps = timesteps.astype(jnp.float32)
  g = jnp.asarray(cfg_scale, jnp.float32)
  if use_cfg:
    # Cond and uncond share everything but the keys `uncond` overrides (I2V: same clip_fea and y, §1.14).
    both = jax.tree.map(_concat, cond, {**cond, **uncond})

  def body(i, carry):
    # params ride in the carry (unchanged): NNX transforms inside the model (nnx.scan over blocks) refuse
    # variables traced at an outer level, so the merge must see loop-level tracers.
    x, state, params = carry
    t = jnp.broadcast_to(timesteps[i], (b,))
    if use_cfg:
      xx = shd.constrain(_concat(x, x), _LATENT_AXES)  # the CFG pair may be split over `data`
      vv = denoise_fn(params, xx, _concat(t, t), both).astype(jnp.float32)
      v_c, v_u = vv[:b], vv[b:]
      v = v_u + g * (v_c - v_u)
    else:
      v = denoise_fn(params, x, t, cond).astype(jnp.float32)
    key = jax.random.fold_in(rng, i)
    x, state = solver.step(state, x, v, i, sigmas, key)
    jax.debug.callback(_tick, i, ordered=False)
    return shd.constrain(x, _LATENT_AXES), state, params

  x, _, _ = jax.lax.fori_loop(0, n, body, (x, solver.init_state(x), params))
  return x


_loop_jit = jax.jit(_loop, static_argnums=(0, 1, 2))


def check_solver_sigmas(solver, sigmas):
  """Refuses a schedule the solver cannot integrate. UniPC's log-SNR λ = log((1 − σ)/σ) is −∞ at σ = 1, so a
  step list starting at t = 1000 (σ = 1) turns its second-order corrector into ∞/∞ = NaN from the third step
  on: a black video with no error. (Its own schedules start below 1: `unipc_sigmas` at σ ≤ 0.9998.)"""
  name = solver if isinstance(solver, str) else solver.name
  sigmas = np.asarray(sigmas, np.float32)
  if name == "unipc" and sigmas.shape[0] > 3 and sigmas[0] >= 1.0:
    raise UsageError(f"solver 'unipc' cannot start at sigma 1 (timestep 1000) with {sigmas.shape[0] - 1} steps: "
                     f"its log-SNR is -inf there and the result is NaN; start the step list below 1000 (e.g. "
                     f"999, as causvid_lightx2v) or use solver 'euler' or 'consistency'")


def _prepare(denoise_fn, noise, sigmas, timesteps, solver, cfg_scale, cond, uncond, rng, params):
  solver = get_solver(solver)
  sigmas = np.asarray(sigmas, np.float32)
  timesteps = np.asarray(timesteps)
  if sigmas.ndim != 1 or timesteps.ndim != 1 or sigmas.shape[0] != timesteps.shape[0] + 1:
    raise UsageError(f"sigmas {sigmas.shape} must be [N+1] for timesteps {timesteps.shape} [N]")
  check_solver_sigmas(solver, sigmas)
  if sigmas[-1] != 0:
    raise UsageError(f"sigmas must end in 0 (final_sigmas_type='zero'); got {sigmas[-1]}")
  if not isinstance(cond, dict) or "context" not in cond:
    raise UsageError("cond must be a dict with at least 'context' (plus 'clip_fea' and 'y' for I2V)")
  use_cfg = uncond is not None
  if use_cfg and not isinstance(uncond, dict):
    raise UsageError("uncond must be a dict (e.g. {'context': negative_context}) or None (no CFG)")
  if rng is None:
    if solver.stochastic:
      raise UsageError(f"solver {solver.name!r} draws fresh noise every step; pass rng=jax.random.key(seed)")
    rng = jax.random.key(0)
  args = (params, noise, jnp.asarray(sigmas), jnp.asarray(timesteps, jnp.float32), cond,
          uncond if use_cfg else {}, jnp.asarray(cfg_scale, jnp.float32), rng)
  return (denoise_fn, solver, use_cfg), args


def sample(denoise_fn, noise, *, sigmas, timesteps, solver, cfg_scale=1.0, cond, uncond=None, rng=None,
           params=None):
  """Runs the whole denoise loop as one compiled program and returns the final latent (float32).

  noise: `[B, F, H, W, C]` initial latent x_{σ_0}. sigmas: float32 `[N+1]` ending in 0; timesteps: `[N]` (what
  the DiT is conditioned on). solver: name or `Solver`. cond/uncond: dicts of arrays (`context` `[B, S, D]`,
  and for I2V `clip_fea`, `y`); `uncond=None` disables CFG, otherwise its keys override `cond`'s for the
  unconditional half. rng: PRNG key (required by stochastic solvers; step i uses `fold_in(rng, i)`).
  """
  static, args = _prepare(denoise_fn, noise, sigmas, timesteps, solver, cfg_scale, cond, uncond, rng, params)
  return _loop_jit(*static, *args)


def compile_sample(denoise_fn, noise, *, sigmas, timesteps, solver, cfg_scale=1.0, cond, uncond=None,
                   rng=None, params=None):
  """Ahead-of-time compiles the loop for these shapes: returns `(run, args)` with `run(*args)` -> latent.

  Lets a CLI time compilation apart from denoising; the program is the one `sample` uses (same cache).
  """
  static, args = _prepare(denoise_fn, noise, sigmas, timesteps, solver, cfg_scale, cond, uncond, rng, params)
  compiled = _loop_jit.lower(*static, *args).compile()
  return compiled, args
