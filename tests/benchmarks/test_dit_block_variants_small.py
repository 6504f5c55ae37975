"""`benchmarks/dit_block_variants.py`: the `--small` CPU run times every epilogue variant under each requested
XLA flag set in its own subprocess; the variants that round differently stay within a few bf16 ulps of the
model's own formulation, the halves RoPE layout gives the same block output, and the patches are undone."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks import dit_block_variants as dbv  # noqa: E402


def test_small_run_has_every_variant_per_flag_set():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "dit_block_variants.py"), "--small",
                         "--iters", "2", "--flag-sets", "default,no_triton_gemm"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert list(r["flag_sets"]) == ["default", "no_triton_gemm"]
  assert r["flag_sets"]["no_triton_gemm"]["xla_flags"].endswith("--xla_gpu_enable_triton_gemm=false")
  base = r["flag_sets"]["default"]["variants"]["current"]["ms"]
  assert r["baseline_ms"] == base
  for s in r["flag_sets"].values():
    rows = s["variants"]
    assert list(rows) == list(dbv.VARIANTS)
    assert rows["current"]["rel_diff"] == 0.0
    for name, row in rows.items():
      assert row["finite"] and row["ms"] > 0, (name, row)
      assert row["speedup"] == pytest.approx(base / row["ms"])
      # One bf16 ulp is 2^-8 ~ 4e-3 relative; an extra rounding of some matmul outputs stays well under 1e-2,
      # while a wrong formulation (lost bias, unmatched q/k permutation) moves the output by O(1).
      assert row["rel_diff"] < 1e-2, (name, row)
    # The variants that round differently really ran (a jit cache hit would give exactly the same output).
    assert rows["f32_dots"]["rel_diff"] > 0 and rows["gelu_bf16"]["rel_diff"] > 0
    assert rows["halves"]["rel_diff"] < 1e-4
    assert rows["rope_flip"]["rel_diff"] < 1e-5


@pytest.mark.parametrize("name", ["gelu_bf16", "halves", "rope_flip"])
def test_formulation_patches_are_undone(name):
  from wanjax.dit import layers
  from wanjax.dit.attention import SelfAttention
  from wanjax.nn import Dense
  from wanjax.dit import attention as dit_attention

  def patched():
    return (Dense.__call__, layers.MLP.__call__, SelfAttention.qkv, dit_attention.apply_rope)
  before = patched()
  with pytest.raises(RuntimeError):
    with dbv.formulation(name):
      assert patched() != before
      raise RuntimeError("inside")
  assert patched() == before


@pytest.mark.parametrize("per_sample", [False, True])
def test_rope_flip_is_the_same_rotation_fp32(per_sample):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from wanjax.dit import rope
  cos, sin = rope.rope_cos_sin(128, (2, 3, 4), frame_offset=7)
  if per_sample:
    cos, sin = jnp.stack([cos, cos[::-1]]), jnp.stack([sin, sin[::-1]])
  x = jax.random.normal(jax.random.key(0), (2, cos.shape[-2], 3, 128)) * 3.0
  want = np.asarray(rope.apply_rope(x, cos, sin))
  got = np.asarray(dbv.apply_rope_flip(x, cos, sin))
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
  assert not np.allclose(want, np.asarray(x), atol=1e-3)    # the rotation is not the identity here
