"""The opt-in FFN form "bf16_formula" (`wanjax.dit.layers.ffn_gelu_form`): fc1's bias and the tanh GELU in the
half-precision compute dtype, spelled as XLA's GPU GEMM rewriter matches a cuBLASLt BIAS_GELU epilogue. It must
stay close to the default float32 form, leave float32 and quantised layers alone, and really keep the GELU in
bf16 (no float32 convert between fc1 and the tanh)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tests.conftest import max_rel_err
from wanjax.dit import layers

BF16_TOL = 3e-2   # bias + GELU rounded per op in bf16 vs once from float32 (measured 6.6e-3 on this MLP)


def _mlp(dtype):
  mlp = layers.MLP(32, 96, 32, act="gelu_tanh", compute_dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  mlp.fc1.bias.set_value(jax.random.normal(jax.random.key(1), (96,)) * 0.5)
  return mlp


def _tanh_input_dtypes(fn, x):
  jax.clear_caches()   # the form is read at trace time; a cached trace of `fn` would answer for the other form
  return [e.invars[0].aval.dtype for e in jax.make_jaxpr(fn)(x).eqns if e.primitive.name == "tanh"]


def test_bf16_formula_is_close_and_keeps_the_gelu_in_bf16(monkeypatch):
  mlp = _mlp(jnp.bfloat16)
  x = jax.random.normal(jax.random.key(2), (4, 7, 32)) * 2.0
  want = mlp(x)
  assert _tanh_input_dtypes(mlp, x) == [jnp.float32]
  monkeypatch.setattr(layers, "ffn_gelu_form", lambda: "bf16_formula")
  got = mlp(x)
  assert got.dtype == want.dtype == jnp.bfloat16
  assert 0 < max_rel_err(got.astype(jnp.float32), want.astype(jnp.float32)) < BF16_TOL
  assert _tanh_input_dtypes(mlp, x) == [jnp.bfloat16]
  # The formula is the tanh GELU: against jax's own in float32.
  v = jnp.linspace(-6.0, 6.0, 101)
  np.testing.assert_allclose(layers.gelu_tanh_formula(v), jax.nn.gelu(v, approximate=True), rtol=1e-6, atol=1e-6)


def test_float32_and_quantised_layers_keep_the_default(monkeypatch):
  mlp32 = _mlp(jnp.float32)
  x = jax.random.normal(jax.random.key(3), (2, 5, 32))
  want = mlp32(x)
  monkeypatch.setattr(layers, "ffn_gelu_form", lambda: "bf16_formula")
  np.testing.assert_array_equal(np.asarray(mlp32(x)), np.asarray(want))
  mlp = _mlp(jnp.bfloat16)
  mlp.fc1.kernel_scale = nnx.Param(jnp.ones((1, 96)))   # a weight-only quantised fc1 keeps its dequantising path
  assert _tanh_input_dtypes(mlp, x) == [jnp.float32]
