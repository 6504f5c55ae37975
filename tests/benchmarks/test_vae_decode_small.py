"""`benchmarks/vae_decode.py --small` end to end on CPU: both modes run, and the JSON line carries XLA's memory plan
(tiled scratch below chunked) next to the allocator fields, which are null where the device has no stats."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "vae_decode.py")


@pytest.mark.slow
def test_small_run_reports_json():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)   # one CPU device, as on a real run
  proc = subprocess.run([sys.executable, SCRIPT, "--small"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["benchmark"] == "vae_decode"
  res = out["results"]
  assert set(res) == {"chunked", "tiled"} and all(res.values()), proc.stdout[-3000:]
  for r in res.values():
    assert r["out_shape"] == [1, 17, 64, 64, 3] and r["finite"] is True
    for key in ("sec", "compile_s", "first_call_s", "init_s", "xla_temp_gb", "xla_argument_gb", "xla_output_gb"):
      assert r[key] > 0, key
    # Output: 17 x 64 x 64 x 3 float32.
    assert r["xla_output_gb"] * 2**30 == 17 * 64 * 64 * 3 * 4
    if r["platform"] == "cpu":
      assert r["state_in_use_gb"] is None and r["compile_peak_gb"] is None and r["peak_gb"] == 0.0
  assert res["tiled"]["tile"] == [4, 4] and res["chunked"]["tile"] is None
  assert res["tiled"]["xla_temp_gb"] < res["chunked"]["xla_temp_gb"]
  assert res["tiled"]["xla_argument_gb"] == res["chunked"]["xla_argument_gb"]
