"""The fp32/bf16 precision policy, in one place.

Mirrors the reference precision map (spec `wan_model.md` §1.12): under `bf16` the DiT keeps float32 parameters,
a float32 residual stream, float32 norms/modulation/time MLP/head, and runs the block matmuls and attention in
bfloat16. Under `float32` everything is float32. Modules ask the policy (`policy.compute_dtype`) instead of
scattering `astype` calls.
"""

import dataclasses

import jax.numpy as jnp

from wanjax.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Policy:
  name: str
  param_dtype: jnp.dtype     # storage dtype of parameters (master weights)
  compute_dtype: jnp.dtype   # dtype of the block matmuls and attention inputs
  # The fp32 path (norm statistics, modulation, residual stream, time MLP, head) is always float32.
  fp32: jnp.dtype = jnp.float32

  @property
  def is_bf16(self) -> bool:
    return self.compute_dtype == jnp.bfloat16

  def cast(self, x):
    """Casts `x` to the matmul/attention compute dtype."""
    return x.astype(self.compute_dtype)


FLOAT32 = Policy("float32", jnp.float32, jnp.float32)
BF16 = Policy("bf16", jnp.float32, jnp.bfloat16)
# Weights stored in bf16 as well (halves memory; fp32-path layers then see bf16-rounded weights).
BF16_WEIGHTS = Policy("bf16_weights", jnp.bfloat16, jnp.bfloat16)
# fp16 compute with fp32 master weights: what the reference CLIP image encoder runs (spec §5.1).
FP16 = Policy("fp16", jnp.float32, jnp.float16)

_POLICIES = {"float32": FLOAT32, "fp32": FLOAT32, "bf16": BF16, "bfloat16": BF16,
             "bf16_weights": BF16_WEIGHTS, "fp16": FP16, "float16": FP16}


def get_policy(name) -> Policy:
  """Returns the policy called `name` ('float32' | 'bf16' | 'bf16_weights' | 'fp16'); a Policy passes through."""
  if isinstance(name, Policy):
    return name
  try:
    return _POLICIES[str(name)]
  except KeyError:
    raise UsageError(f"unknown precision {name!r}; valid: float32, bf16, bf16_weights, fp16") from None
