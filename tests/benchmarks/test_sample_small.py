"""`benchmarks/sample.py --small` end to end, twice over one persistent compilation cache (issue 10's warm start).

The second run must compile nothing new: every program is read back from the cache the first run wrote, so the
cache holds the same entries afterwards. Timing is not asserted (the benchmark prints the figures); what is
checked is that the cache is written, hit, and reported.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*extra):
  """`benchmarks/sample.py --small --skip-t5 --skip-vae *extra` -> its final JSON line."""
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "sample.py"), "--small", "--skip-t5",
                         "--skip-vae", *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sample_benchmark_cold_then_warm_cache(tmp_path):
  cache = tmp_path / "jax_cache"
  cached = ("--compilation-cache", str(cache), "--cache-min-compile-s", "0")
  cold = _run(*cached)
  assert cold["cache_entries_at_start"] == 0 and cold["cache_entries_at_end"] > 0, cold
  assert cold["compile_total_s"] == cold["4step_compile_s"] + cold["cfg_compile_s"] > 0, cold
  assert all(k in cold for k in ("4step_denoise_s", "cfg_sec_per_step", "e2e_4step_warm_s")), cold
  warm = _run(*cached)
  assert warm["cache_entries_at_start"] == warm["cache_entries_at_end"] == cold["cache_entries_at_end"], warm
  assert len(os.listdir(cache)) == cold["cache_entries_at_end"]


def test_sample_benchmark_int8_four_steps_only():
  """`--quant int8 --cfg-steps 0` (the 14B recipe of gpu_session.sh, here on the tiny model): the DiT is built
  quantised, only the 4-step sampler is compiled, and the int8 weights are smaller than the float ones."""
  q = _run("--cfg-steps", "0", "--quant", "int8")
  f = _run("--cfg-steps", "0", "--f32-kernels")
  h = _run("--cfg-steps", "0")   # the default: the bf16 matmuls' kernels stored in bf16 (`wanjax.nn.cast_kernels`)
  assert q["quant"] == "int8" and f["quant"] == h["quant"] == "none" and f["f32_kernels"] and not h["f32_kernels"]
  assert "cfg_compile_s" not in q and q["compile_total_s"] == q["4step_compile_s"] > 0, q
  # fp32 block kernels become 1 byte per value; the tiny model's embeddings and head stay float (0.61x here).
  assert 0 < q["dit_weight_gb"] < 0.75 * f["dit_weight_gb"], (q["dit_weight_gb"], f["dit_weight_gb"])
  assert q["dit_weight_gb"] < h["dit_weight_gb"] < 0.9 * f["dit_weight_gb"], (q, h, f)
