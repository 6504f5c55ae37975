"""`wanjax.ops.pallas_gpu`: the split-tail wrapper that lets a kernel restricted to whole key/query blocks attend
over Wan's 32,760 tokens gives plain softmax attention (float32, up to rounding) for a length that is a whole
number of blocks, one that is not, and one shorter than a block, with the kernel only ever seeing whole blocks;
`attention(impl="pallas_gpu")` refuses in one line what the kernel cannot do. The kernel itself needs a Hopper
GPU: `benchmarks/attention_mgpu.py` checks it there against cuDNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wanjax.errors import UsageError
from wanjax.ops import pallas_gpu as pg
from wanjax.ops.attention import attention


def _reference_main(calls):
  def main(q, k, v):
    calls.append((q.shape, k.shape, q.dtype))
    out, lse = pg.softmax_with_lse(q, k, v)
    return out.astype(q.dtype), lse
  return main


def _qkv(S, L=50, n=3, kd=64, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (2, L, n, kd)) * 2.0, jax.random.normal(keys[1], (2, S, n, kd)) * 2.0,
          jax.random.normal(keys[2], (2, S, n, kd)))


@pytest.mark.parametrize("S", [128, 200, 40])
def test_split_tail_matches_plain_attention_fp32(S):
  q, k, v = _qkv(S)
  calls = []
  out = pg.split_tail_attention(q, k, v, main=_reference_main(calls), block_kv=64, q_multiple=32)
  want = jax.nn.dot_product_attention(q, k, v, implementation="xla")
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=2e-5, atol=2e-6)
  # The kernel only ever sees whole blocks: queries padded to 64 (2 x 32), keys cut to a multiple of 64.
  assert [c[:2] for c in calls] == ([] if S < 64 else [((2, 64, 3, 64), (2, (S // 64) * 64, 3, 64))])


def test_wrapper_scales_in_float32_and_returns_the_input_dtype():
  q, k, v = (a.astype(jnp.bfloat16) for a in _qkv(200, seed=1))
  calls = []
  out = pg.pallas_gpu_attention(q, k, v, block_q=32, block_kv=64, main=_reference_main(calls))
  assert out.dtype == jnp.bfloat16 and calls[0][2] == jnp.float32   # the main gets float32 q to round once
  want = jax.nn.dot_product_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(mask=jnp.ones((1, 1, 8, 8), bool)), "supports no bias, mask or key lengths"),
    (dict(key_lengths=jnp.array([4])), "supports no bias, mask or key lengths"),
    (dict(bias=jnp.zeros((1, 1, 8, 8))), "supports no bias, mask or key lengths"),
])
def test_unsupported_inputs_are_one_line_errors(kwargs, message):
  with pytest.raises(UsageError, match=message):
    pg.check_supported(64, "bias" in kwargs, kwargs.get("mask"), kwargs.get("key_lengths"), "gpu")


def test_head_dim_and_platform_errors():
  with pytest.raises(UsageError, match="multiple of 64, got 48"):
    pg.check_supported(48, False, None, None, "gpu")
  q = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
  with pytest.raises(UsageError, match="needs a CUDA GPU .* on 'cpu'"):
    attention(q, q, q, impl="pallas_gpu")
