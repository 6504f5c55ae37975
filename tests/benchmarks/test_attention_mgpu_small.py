"""`benchmarks/attention_mgpu.py --small`: the CPU run times plain attention and the split-tail wrapper (with the
kernel's contract in plain attention standing in for the GPU kernel) and reports their difference."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_small_cpu_run():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "attention_mgpu.py"), "--small"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  (row,) = r["shapes"]
  assert row["jax_xla"]["ms"] > 0
  split = row["reference_bq64_bkv64_split_tail"]
  assert split["ms"] > 0 and split["rel_diff_vs_reference"] < 1e-2
