"""The Wan VAE's convs follow the bf16-matmul-output rule (`wanjax.vae.layers.conv_output_dtype`): under bf16 a
conv writes its product in bf16 and the bias is added in float32, then rounded; under float32 nothing changes."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax import precision
from wanjax.vae import layers as vl

_DN = ("NDHWC", "DHWIO", "NDHWC")


def _conv(policy):
  conv = vl.CausalConv3d(8, 12, 3, policy=precision.get_policy(policy), rngs=nnx.Rngs(0))
  conv.bias.set_value(jax.random.normal(jax.random.key(1), (12,)) * 0.5)
  return conv


def _product(x, kernel, dtype, out):
  return jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (1, 1, 1), ((2, 0), (1, 1), (1, 1)),
                                      dimension_numbers=_DN, preferred_element_type=out,
                                      precision=jax.lax.Precision.HIGHEST)


def test_bf16_conv_rounds_the_product_then_adds_the_bias():
  conv = _conv("bf16")
  x = jax.random.normal(jax.random.key(2), (1, 3, 5, 6, 8)) * 2.0
  y = conv(x)
  assert y.dtype == jnp.bfloat16
  prod = _product(x, conv.kernel[...], jnp.bfloat16, jnp.bfloat16)
  want = (prod.astype(jnp.float32) + conv.bias[...]).astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))
  assert vl.conv_output_dtype(jnp.bfloat16) == jnp.bfloat16


def test_float32_conv_keeps_the_float32_product():
  conv = _conv("float32")
  x = jax.random.normal(jax.random.key(3), (1, 3, 5, 6, 8))
  want = _product(x, conv.kernel[...], jnp.float32, jnp.float32) + conv.bias[...]
  np.testing.assert_allclose(np.asarray(conv(x)), np.asarray(want), rtol=1e-6, atol=1e-6)
  assert vl.conv_output_dtype(jnp.float32) == jnp.float32
