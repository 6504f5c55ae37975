"""`benchmarks/attention_mgpu.py`: the split-tail wrapper that lets a kernel restricted to whole key/query blocks
attend over Wan's 32,760 tokens gives plain softmax attention (float32, exact up to rounding), for a length that
is a whole number of blocks, one that is not, and one shorter than a block; the --small CPU run works."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks import attention_mgpu as am  # noqa: E402


@pytest.mark.parametrize("S", [128, 200, 40])
def test_split_tail_matches_plain_attention_fp32(S):
  import jax
  import jax.numpy as jnp
  keys = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(keys[0], (2, 50, 3, 16)) * 2.0
  k = jax.random.normal(keys[1], (2, S, 3, 16)) * 2.0
  v = jax.random.normal(keys[2], (2, S, 3, 16))
  calls = []

  def main(q, k, v):
    calls.append((q.shape, k.shape))
    return am.reference_main(q, k, v)

  out = am.split_tail_attention(q, k, v, main=main, block_kv=64, q_multiple=32)
  want = jax.nn.dot_product_attention(q, k, v, implementation="xla")
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=2e-5, atol=2e-6)
  # The kernel only ever sees whole blocks: queries padded to 64 (2 x 32), keys cut to a multiple of 64.
  assert calls == ([] if S < 64 else [((2, 64, 3, 16), (2, (S // 64) * 64, 3, 16))])


def test_small_cpu_run():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "attention_mgpu.py"), "--small"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  (row,) = r["shapes"]
  split = row["reference_bq64_bkv64_split_tail"]
  assert split["ms"] > 0 and split["rel_diff_vs_reference"] < 1e-2
