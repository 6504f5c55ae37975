"""`benchmarks/dit_forward.py --small` on CPU: both frameworks run in their own processes, outputs are finite (the
diffusers model's RoPE tables are rebuilt after `to_empty`, which leaves them uninitialised), and each reports its
self-attention time alone, which splits the forward and bounds the speed-up any change outside the kernel can
give."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.torch
def test_small_run_reports_attention_split():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "dit_forward.py"), "--small"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  res = out["results"]
  assert set(res) == {"torch", "jax"} and all(res.values()), proc.stdout[-3000:]
  for name, r in res.items():
    assert r["finite"] is True, name
    assert 0 < r["self_attn_s"] and 0 < r["sec"], (name, r)
  assert out["speedup_vs_diffusers"] == pytest.approx(res["torch"]["sec"] / res["jax"]["sec"])
  assert out["max_speedup_same_attention"] == pytest.approx(res["torch"]["sec"] / res["jax"]["self_attn_s"])
  assert "self-attention alone" in proc.stdout
