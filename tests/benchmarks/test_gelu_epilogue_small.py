"""`benchmarks/gelu_epilogue.py`: the --small CPU run compiles every fc1 + bias + GELU form, the forms that keep the
bias agree with the model's to bf16 rounding (the bias-less probe does not), and the HLO readers find a GEMM
epilogue and count fusions."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks import gelu_epilogue as ge  # noqa: E402


def test_small_run():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gelu_epilogue.py"), "--small"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(proc.stdout.strip().splitlines()[-1])["forms"]
  assert list(rows) == list(ge.FORMS)
  for name in ("bf16_jax", "bf16_formula", "f32_formula"):
    assert 0 < rows[name]["rel_diff"] < 1e-2, (name, rows[name])     # a bf16 rounding apart, no more
  assert rows["bf16_nobias"]["rel_diff"] > 0.05                       # the bias really matters here
  assert all(r["finite"] and r["ms"] > 0 and r["epilogues"] == [] for r in rows.values())   # no cuBLAS on a CPU


def test_hlo_readers():
  hlo = "\n".join([
      '  %custom-call.8 = (bf16[32760,8960]{1,0}, s8[4]{0}) custom-call(%a, %b, %c), '
      'custom_call_target="__cublas$lt$matmul", backend_config={"gemm_backend_config":{"epilogue":"BIAS_GELU"}}',
      '  %custom-call.9 = bf16[8,8]{1,0} custom-call(%a, %b), backend_config={"gemm_backend_config":'
      '{"epilogue":"DEFAULT"}}',
      "  %loop_convert_fusion = bf16[1,32760,8960]{2,1,0} fusion(%x), kind=kLoop, calls=%f",
      "  ROOT %fusion.2 = bf16[8]{0} fusion(%y), kind=kInput, calls=%g"])
  assert ge.epilogues(hlo) == ["BIAS_GELU", "DEFAULT"]
  assert ge.fusion_count(hlo) == 2
