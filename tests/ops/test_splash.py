"""Splash attention (Pallas TPU kernel, interpret mode on CPU) against the XLA einsum-softmax path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import max_rel_err
from wanjax import sharding as shd
from wanjax.ops import splash
from wanjax.ops.attention import BlockCausal, attention, splash_supports

FP32_TOL = 1e-5
BF16_TOL = 8e-3           # ~2 bf16 ulps (2^-8): q scaling and probabilities are rounded to bf16
GRAD_TOL = 1e-4

# batch, q length (not a multiple of 128: exercises padding), heads, head dim
B, L, N, K = 2, 200, 2, 16


def _qkv(dtype, b=B, lq=L, s=L, n=N, k=K, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(ks[0], (b, lq, n, k), jnp.float32)
  kk = jax.random.normal(ks[1], (b, s, n, k), jnp.float32)
  v = jax.random.normal(ks[2], (b, s, n, k), jnp.float32)
  return q.astype(dtype), kk.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("case", ["full", "key_lengths", "block_causal", "cross_lengths"])
def test_splash_matches_xla_fp32(case):
  s = 328 if case == "cross_lengths" else L          # keys longer than queries, 328 -> padded to 384
  q, k, v = _qkv(jnp.float32, s=s)
  kw = {}
  if case in ("key_lengths", "cross_lengths"):
    kw["key_lengths"] = jnp.array([131, s])          # one sample with padded keys beyond a block boundary
  if case == "block_causal":
    kw["mask"] = BlockCausal(block_tokens=48)        # 48 tokens per block: not aligned with 128-wide tiles
  out = jax.jit(lambda q, k, v: attention(q, k, v, impl="splash", **kw))(q, k, v)
  ref = attention(q, k, v, impl="xla", **kw)
  err = max_rel_err(out, ref)
  assert err <= FP32_TOL, err


def test_splash_bf16():
  q, k, v = _qkv(jnp.bfloat16)
  mask = BlockCausal(block_tokens=64)
  out = attention(q, k, v, mask=mask, impl="splash")
  assert out.dtype == jnp.bfloat16
  ref = attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask=mask, impl="xla")
  err = max_rel_err(out.astype(jnp.float32), ref)
  assert err <= BF16_TOL, err


def test_block_causal_dense_matches_reference_mask():
  from wanjax.dit.attention import block_causal_mask
  # 5 frames of 6 tokens, 2 frames per block: the DiT's dense mask equals BlockCausal(12).dense.
  dense = np.asarray(block_causal_mask(5, 6, 2))
  np.testing.assert_array_equal(np.asarray(BlockCausal(12).dense(30, 30))[0, 0], dense)


def test_splash_gradients_match_xla():
  q, k, v = _qkv(jnp.float32, lq=136, s=136, seed=1)
  cot = jax.random.normal(jax.random.key(7), q.shape, jnp.float32)
  mask = BlockCausal(block_tokens=40)

  def loss(impl):
    return lambda q, k, v: jnp.sum(attention(q, k, v, mask=mask, key_lengths=jnp.array([100, 136]),
                                             impl=impl) * cot)

  got = jax.grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)
  ref = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
  for name, g, r in zip("qkv", got, ref):
    err = max_rel_err(g, r)
    assert err <= GRAD_TOL, (name, err)


@pytest.mark.parametrize("mesh_spec,causal", [("data=2,context=2,tensor=2", True), ("context=4,tensor=2", True),
                                              ("context=4,tensor=2", False), ("data=2,context=4", False)])
def test_splash_sharded_matches_single_device(mesh_spec, causal):
  # q length sharded on context (kernel mask tables sharded with it), heads on tensor, batch on data.
  q, k, v = _qkv(jnp.float32, lq=L, s=L, seed=2)
  mask = BlockCausal(block_tokens=56) if causal else None
  lengths = jnp.array([170, 200])
  ref = attention(q, k, v, mask=mask, key_lengths=lengths, impl="xla")
  mesh = shd.make_mesh(mesh_spec)
  with shd.activate(mesh):
    out = jax.jit(lambda q, k, v: attention(q, k, v, mask=mask, key_lengths=lengths, impl="splash"))(q, k, v)
  err = max_rel_err(out, ref)
  assert err <= FP32_TOL, err


def test_block_choice_for_wan_lengths():
  # 81x480x832 -> 21*30*52 = 32,760 tokens; 81x720x1280 -> 21*45*80 = 75,600 tokens.
  for length, shards in [(32760, 1), (32760, 8), (75600, 1), (75600, 4), (512, 1), (257, 1)]:
    plan = splash.plan_blocks(length, length, shards)
    assert plan.q_len % (plan.block_q * shards) == 0 and plan.kv_len % plan.block_kv == 0
    assert plan.block_kv % plan.block_kv_compute == 0 and plan.block_kv_compute % 128 == 0
    least_q = -(-length // (128 * shards)) * 128 * shards       # the least lane-aligned padding
    assert plan.q_len - least_q <= splash.PAD_TOLERANCE * length, (length, plan)
  plan = splash.plan_blocks(32760, 32760)
  assert (plan.q_len, plan.kv_len, plan.block_q, plan.block_kv) == (32768, 32768, 2048, 1024)


def test_auto_keeps_short_and_dense_masked_attention_on_xla():
  assert splash_supports(32760, 32760, 128, False, None)
  assert splash_supports(32760, 32760, 128, False, BlockCausal(1560))
  assert not splash_supports(32760, 512, 128, False, None)            # text cross-attention
  assert not splash_supports(32760, 32760, 128, False, jnp.ones((1, 1, 4, 4), bool))
  assert not splash_supports(32760, 32760, 128, True, None)
  assert not splash_supports(32760, 32760, 96, False, None)
