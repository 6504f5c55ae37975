"""`benchmarks/attention_fp8.py --small` on CPU: only the XLA bf16 kernel runs (the cuDNN bf16 and FP8 kernels and
torch SDPA need a CUDA GPU); its output is compared against the fp32 reference on the same bf16-rounded inputs,
so the reported error is the bf16 computation's own, and bad sizes are refused naming the flag."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "attention_fp8.py")


def test_small_run_reports_error_against_fp32():
  proc = subprocess.run([sys.executable, SCRIPT, "--small", "--q-scale", "4", "--kv-lengths", "64,256,4680"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["q_scale"] == 4.0 and out["shape"] == "[1, 256, 2, 128]"
  res = out["jax"]["results"]
  assert set(res) == {"bf16_xla"}, res
  r = res["bf16_xla"]
  assert r["finite"] is True and r["sec"] > 0
  assert 1e-4 < r["rel_l2_err"] < 1e-2, r     # bf16 probabilities and P·V: a few 1e-3, never exact
  # --small keeps the key lengths that fit its 256-token buffer; 64 queries attend over each.
  assert out["jax"]["query_tokens"] == 64 and set(out["jax"]["key_lengths"]) == {"64", "256"}
  assert all(v["ms"] > 0 for v in out["jax"]["key_lengths"].values())


def test_bad_size_names_the_flag():
  proc = subprocess.run([sys.executable, SCRIPT, "--tokens", "0"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2 and "--tokens must be >= 1" in proc.stderr
