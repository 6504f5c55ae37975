"""`benchmarks/dit_qkv_variants.py`: the `--small` CPU run gives every variant with an attention output that
matches `current`'s, and the halves layout (q/k output channels permuted per head, RoPE on contiguous halves)
leaves attention unchanged only because q and k are permuted alike."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks import dit_qkv_variants as dqv  # noqa: E402


def test_small_run_has_every_variant_with_the_same_attention():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "dit_qkv_variants.py"), "--small",
                         "--iters", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  rows = r["variants"]
  assert list(rows) == ["current", "fused", "halves", "halves_fused", "bf16_out_rope"]
  assert r["gflop"] == pytest.approx(2 * r["tokens"] * r["dim"] ** 2 * 3 / 1e9)
  for name, row in rows.items():
    assert row["finite"] and row["ms"] > 0 and row["dtype"] == "bfloat16", (name, row)
    assert row["speedup"] == pytest.approx(rows["current"]["ms"] / row["ms"])
    # bf16 q/k/v: the variants may round differently from `current` (matmul split, RMSNorm summation order),
    # one bf16 ulp is 2^-8 ~ 4e-3 relative, so a real difference of a few ulps stays under 1e-2, while a wrong
    # formulation (a pair order mismatch, a lost bias) moves the output by O(1) (see the q-only test below).
    assert row["attn_rel_err"] < 1e-2, (name, row)
  assert rows["current"]["attn_rel_err"] == 0.0


def test_halves_perm_is_per_head_evens_then_odds():
  assert dqv.halves_perm(8, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
  perm = dqv.halves_perm(384, 3)
  assert sorted(perm.tolist()) == list(range(384))


@pytest.fixture(scope="module")
def fp32_attn():
  """A random fp32 self-attention of a tiny block (biases and RMSNorm scales randomised), its input and RoPE."""
  import dataclasses
  import jax
  from flax import nnx
  from wanjax import precision
  from wanjax.dit import rope
  from wanjax.dit.config import get_config
  from wanjax.dit.model import WanBlock
  cfg = dataclasses.replace(get_config("t2v_1_3b"), dim=64, ffn_dim=128, num_heads=2, text_len=16)
  block = WanBlock(cfg, policy=precision.get_policy("float32"), rngs=nnx.Rngs(3), attn_impl="xla")
  attn = block.self_attn
  dqv.randomise_qk_affine(attn, jax.random.key(4))
  grid = (2, 3, 4)
  cos, sin = rope.rope_cos_sin(cfg.head_dim, grid, frame_offset=5)
  x = jax.random.normal(jax.random.key(5), (2, 24, cfg.dim))
  return attn, x, cos, sin


def _attn_out(q, k, v):
  from wanjax.ops.attention import attention
  return attention(q, k, v, impl="xla")


@pytest.mark.parametrize("fused", [False, True])
def test_halves_keeps_the_attention_output_fp32(fp32_attn, fused):
  attn, x, cos, sin = fp32_attn
  q0, k0, v0 = dqv.current_qkv(attn, x, cos, sin)
  q1, k1, v1 = dqv.qkv_variant(attn, x, cos, sin, halves=True, fused=fused)
  # The halves q/k are the current ones with each head's channels reordered (so the permuted bias, RMSNorm
  # scale and the halves RoPE are each right), not merely some q/k with the same attention.
  order = dqv.halves_order(q0.shape[-1])
  np.testing.assert_allclose(np.asarray(q1), np.asarray(q0)[..., order], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(k1), np.asarray(k0)[..., order], rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(q1), np.asarray(q0), atol=1e-3)   # the layout really did change
  np.testing.assert_array_equal(np.asarray(v1), np.asarray(v0))
  assert float(dqv.rel_l2(_attn_out(q1, k1, v1), _attn_out(q0, k0, v0))) <= 1e-5


@pytest.mark.parametrize("which", [("q",), ("k",)])
def test_permuting_only_one_of_q_and_k_changes_the_attention(fp32_attn, which):
  attn, x, cos, sin = fp32_attn
  ref = _attn_out(*dqv.current_qkv(attn, x, cos, sin))
  out = _attn_out(*dqv.qkv_variant(attn, x, cos, sin, halves=True, halves_which=which))
  assert float(dqv.rel_l2(out, ref)) > 0.1


def test_halves_rope_takes_per_sample_tables(fp32_attn):
  import jax
  import jax.numpy as jnp
  from wanjax.dit.rope import apply_rope
  _, _, cos, sin = fp32_attn
  x = jax.random.normal(jax.random.key(6), (2, cos.shape[0], 2, 2 * cos.shape[1]))
  order = dqv.halves_order(x.shape[-1])
  cos2, sin2 = jnp.stack([cos, cos[::-1]]), jnp.stack([sin, sin[::-1]])
  want = np.asarray(apply_rope(x, cos2, sin2))[..., order]
  np.testing.assert_allclose(np.asarray(dqv.apply_rope_halves(x[..., order], cos2, sin2)), want, atol=1e-6)
