"""Few-step consistency sampling with fresh noise (spec `distillation.md` §0.2, §5.2 "CM/LCM variant").

Mirrors LightX2V `WanStepDistillScheduler.step_post` (LX 6af19588 … 753a494c) and the Self-Forcing /
Self-Forcing+ training rollout the 4-step models were distilled with: `x0 = x − σ_i·v`, then
`x_{i+1} = (1 − σ_{i+1})·x0 + σ_{i+1}·ε_new` with fresh Gaussian ε_new. With σ_N = 0 the last step returns x0
exactly. The reference draws ε_new from the seeded torch generator; here it is `normal(key)` with the key the
loop folds in per step (not bit-identical to torch, by design).
"""

import jax
import jax.numpy as jnp


def init_state(x):
  del x
  return {}


def step(state, x, v, i, sigmas, key=None):
  """One consistency step (x_i, v_i, key_i) → (x_{i+1}, state); `sigmas` float32 [N+1] ending in 0."""
  if key is None:
    raise ValueError("the consistency solver needs a PRNG key per step")
  x = x.astype(jnp.float32)
  v = v.astype(jnp.float32)
  x0 = x - sigmas[i] * v
  s_n = sigmas[i + 1]
  eps = jax.random.normal(key, x.shape, jnp.float32)
  return (1.0 - s_n) * x0 + s_n * eps, state
