"""`wanjax.nn.Dense` under half-precision compute writes its matmul product in the compute dtype and adds the bias
in float32 (docs/decisions.md, "bf16 matmul outputs"); float32 layers and layers with a float32 `out_dtype` keep
float32 products; `fused_dense` follows the same rule, so it still equals the separate layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wanjax.nn import Dense, matmul_output_dtype
from wanjax.ops.fused import fused_dense

BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32


def test_rule():
  assert matmul_output_dtype(BF16) == BF16
  assert matmul_output_dtype(F16) == F16
  assert matmul_output_dtype(F32) == F32
  assert matmul_output_dtype(BF16, F32) == F32      # a float32 result wanted: keep the float32 product
  assert matmul_output_dtype(F16, BF16) == F32      # output in another dtype than the compute one
  assert matmul_output_dtype(BF16, BF16) == BF16


def _dense(compute, out=None):
  d = Dense(64, 48, compute_dtype=compute, out_dtype=out, rngs=nnx.Rngs(0))
  d.bias.set_value(jax.random.normal(jax.random.key(1), (48,)) * 0.5)
  return d


@pytest.fixture
def x():
  return jax.random.normal(jax.random.key(2), (3, 7, 64)) * 3.0


def test_bf16_dense_rounds_the_product_then_adds_the_bias_in_float32(x):
  d = _dense(BF16)
  y = d(x)
  prod = jnp.einsum("...i,io->...o", x.astype(BF16), d.kernel[...].astype(BF16), preferred_element_type=F32)
  want = (prod.astype(BF16).astype(F32) + d.bias[...]).astype(BF16)
  assert y.dtype == BF16
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))
  # The old form (float32 product, one rounding) differs somewhere on this input, by at most half a bf16 ulp of
  # the product (the extra rounding) plus one of the output (relative to the output it can be more where the
  # bias cancels the product).
  once = (prod + d.bias[...]).astype(BF16)
  diff = np.abs(np.asarray(y, np.float32) - np.asarray(once, np.float32))
  assert diff.max() > 0
  # (one bf16 ulp of v is at most |v| * 2^-7; half of one at most |v| * 2^-8)
  bound = np.abs(np.asarray(prod)) * 2.0 ** -8 + np.abs(np.asarray(once, np.float32)) * 2.0 ** -7 + 1e-6
  assert np.all(diff <= bound)


def test_float32_out_keeps_the_float32_product(x):
  d = _dense(BF16, out=F32)
  prod = jnp.einsum("...i,io->...o", x.astype(BF16), d.kernel[...].astype(BF16), preferred_element_type=F32)
  np.testing.assert_allclose(np.asarray(d(x)), np.asarray(prod + d.bias[...]), rtol=1e-6, atol=1e-6)
  d32 = _dense(F32)
  np.testing.assert_allclose(np.asarray(d32(x)), np.asarray(x @ d32.kernel[...] + d32.bias[...]), rtol=1e-5,
                             atol=1e-5)


def test_fused_dense_equals_separate_layers_bf16(x):
  ds = [_dense(BF16) for _ in range(3)]
  for i, d in enumerate(ds):
    d.kernel.set_value(d.kernel[...] * (i + 1))
  fused = fused_dense(x, ds)
  for f, d in zip(fused, ds):
    assert f.dtype == BF16
    # One bf16 ulp apart at most where the wider matmul rounds its accumulation differently.
    np.testing.assert_allclose(np.asarray(f, np.float32), np.asarray(d(x), np.float32), rtol=2 ** -7, atol=1e-2)
