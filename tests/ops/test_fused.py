"""Fused q/k/v projection equals the three separate Dense calls of the DiT self-attention."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tests.conftest import max_rel_err
from wanjax import precision
from wanjax.dit.attention import SelfAttention
from wanjax.ops.fused import fused_dense
from wanjax.quant import quantize_model

FP32_TOL = 1e-6
BF16_TOL = 1e-2   # bf16 outputs may round differently by one ulp when the matmul is tiled differently

DIM, HEADS, B, L = 24, 2, 2, 7


def _attn(policy):
  attn = SelfAttention(DIM, HEADS, eps=1e-6, policy=precision.get_policy(policy), rngs=nnx.Rngs(3))
  keys = iter(jax.random.split(jax.random.key(5), 3))
  for d in (attn.q, attn.k, attn.v):   # zero-initialised biases would hide a bias mix-up
    d.bias[...] = jax.random.normal(next(keys), d.bias.shape, d.bias[...].dtype)
  return attn


@pytest.mark.parametrize("policy,tol", [("float32", FP32_TOL), ("bf16", BF16_TOL)])
def test_fused_qkv_matches_separate(policy, tol):
  attn = _attn(policy)
  x = jax.random.normal(jax.random.key(1), (B, L, DIM), jnp.float32)
  got = jax.jit(lambda x: fused_dense(x, (attn.q, attn.k, attn.v)))(x)
  want = (attn.q(x), attn.k(x), attn.v(x))
  for name, g, w in zip("qkv", got, want):
    assert g.dtype == w.dtype and g.shape == w.shape
    err = max_rel_err(g.astype(jnp.float32), w.astype(jnp.float32))
    assert err <= tol, (name, err)


def test_fused_qkv_int8_kernels_and_names_unchanged():
  attn = _attn("float32")
  names_before = sorted(str(p) for p, _ in nnx.to_flat_state(nnx.state(attn, nnx.Param)))
  quantize_model(attn, "int8", predicate=lambda path: path and path[-1] in ("q", "k", "v"))
  x = jax.random.normal(jax.random.key(2), (B, L, DIM), jnp.float32)
  got = fused_dense(x, (attn.q, attn.k, attn.v))
  for name, g, w in zip("qkv", got, (attn.q(x), attn.k(x), attn.v(x))):
    err = max_rel_err(g, w)
    assert err <= FP32_TOL, (name, err)
  # Fusion adds no parameter: the checkpoint names are the separate q/k/v (+ their int8 scales).
  names_after = sorted(str(p) for p, _ in nnx.to_flat_state(nnx.state(attn, nnx.Param)))
  assert set(names_before) <= set(names_after)
  assert all("scale" in n or n in names_before for n in names_after)


def test_fused_rejects_mismatched_layers():
  attn = _attn("float32")
  other = _attn("bf16")
  with pytest.raises(ValueError, match="one input width"):
    fused_dense(jnp.zeros((1, DIM)), (attn.q, other.k))
