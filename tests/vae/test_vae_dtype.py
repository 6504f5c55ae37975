"""The bf16 VAE policy (`infer.sample`'s `config.vae_dtype=bf16`) against the float32 decode of the same latent.

The reference decodes in fp32 (Wan2.1 `WanVAE` at inference); bf16 is an opt-in speed setting (H200, 81x480x832:
9.16 s -> 1.40 s, docs/bench/h200_vae_decode.txt). Both models share one set of random float32 weights (the bf16
policy keeps fp32 master weights, norms and accumulation; convs and attention take bf16 inputs), so the
difference is the bf16 compute alone. No torch.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from wanjax.vae import WanVAE, create_vae
from wanjax.vae.config import get_config

# Pixels are in [-1, 1]; bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2 %, ~3 decimal digits), and
# the tiny decoder applies 39 conv/attention kernels to bf16 inputs, so the rounding of each layer's input
# compounds to about 1 % of the pixel range. Measured on this random-weight decoder (pixel std 0.23, max |pixel| 1,
# latent seeds 0 and 1): max |bf16 - fp32| 0.0250 / 0.0244, mean 0.0034 / 0.0035 (the trained toy-world VAE: max
# 0.0026 on pixels up to 0.4). Bounds with 2x headroom.
MAX_ABS_TOL = 0.05
MEAN_ABS_TOL = 0.007
# The option must really change the compute dtype: float32 reorderings alone (chunked vs full decode) differ by
# ~2e-6 (tests/vae/test_chunking.py), so a bf16 run must differ by far more than that.
MIN_MAX_ABS_DIFF = 1e-3

CFG = get_config("tiny")   # channels 12/24/36, z_dim 16 with the Wan2.1 latent statistics
LATENT = (1, 2, 4, 6, CFG.z_dim)   # -> 5 frames of 32x48


@pytest.fixture(scope="module")
def decoded():
  vae32 = create_vae(CFG, policy="float32", seed=0)
  graphdef16, _ = nnx.split(nnx.eval_shape(lambda: WanVAE(CFG, policy="bf16", rngs=nnx.Rngs(0))))
  vae16 = nnx.merge(graphdef16, nnx.state(vae32))   # the same float32 weights under the bf16 policy
  z = jax.random.normal(jax.random.key(0), LATENT)  # normalised latent, as the denoiser returns it
  return vae16, vae32.decode(z), vae16.decode(z)


def test_bf16_decode_close_to_float32(decoded):
  _, ref, got = decoded
  assert ref.shape == got.shape == (1, 5, 32, 48, 3)
  assert ref.dtype == got.dtype == jnp.float32      # the video leaves the decoder as float32 either way
  assert float(jnp.mean(jnp.abs(ref) < 1.0)) > 0.99  # the final clamp does not hide the differences
  assert float(jnp.std(ref)) > 0.1                   # and the pixels are not all near zero
  err = jnp.abs(got - ref)
  max_err, mean_err = float(err.max()), float(err.mean())
  assert max_err <= MAX_ABS_TOL and mean_err <= MEAN_ABS_TOL, (max_err, mean_err)
  assert max_err >= MIN_MAX_ABS_DIFF, f"bf16 decode equals float32 ({max_err}): the policy did not change dtype"


def test_bf16_policy_keeps_float32_weights(decoded):
  vae16, _, _ = decoded
  assert vae16.policy.name == "bf16" and vae16.policy.compute_dtype == jnp.bfloat16
  dtypes = {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(vae16, nnx.Param))}
  assert dtypes == {jnp.dtype(jnp.float32)}
