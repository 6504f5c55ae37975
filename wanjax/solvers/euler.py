"""Deterministic flow-matching Euler step (spec `distillation.md` §0.2, §5.2 "HEAD variant").

Mirrors LightX2V `WanStepDistillScheduler.step_post` at HEAD: `x0 = x − σ_i·v`, then `x_{i+1} = x0 + σ_{i+1}·v`,
which is `x + (σ_{i+1} − σ_i)·v` evaluated in the reference's order (float32). With σ_N = 0 the last step
returns x0. No state.
"""

import jax.numpy as jnp


def init_state(x):
  del x
  return {}


def step(state, x, v, i, sigmas, key=None):
  """One Euler step (x_i, v_i) → (x_{i+1}, state); `sigmas` float32 [N+1] ending in 0."""
  del key
  x = x.astype(jnp.float32)
  v = v.astype(jnp.float32)
  x0 = x - sigmas[i] * v
  return x0 + sigmas[i + 1] * v, state
