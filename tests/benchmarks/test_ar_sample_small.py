"""`benchmarks/ar_sample.py --small` on CPU: the causal sampler runs block by block with the tiny DiT and VAE,
makes the DiT calls its docstring counts (steps per block + a context pass after every block but the last), and
decodes every pixel frame; bad sizes are refused in one line before anything is built."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "ar_sample.py")


def _run(*flags, timeout=300):
  return subprocess.run([sys.executable, SCRIPT, *flags], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


def test_small_run_counts_calls_and_frames():
  proc = _run("--small")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  # --small: 21 pixel frames -> 6 latent frames, 3 per block -> 2 blocks of 4 steps, one context pass between.
  assert out["latent"] == [6, 4, 6] and out["frames_per_block"] == 3 and out["steps"] == 4
  blocks = out["latent"][0] // out["frames_per_block"]
  assert out["model_calls"] == blocks * out["steps"] + blocks - 1
  assert out["decode"] is True and out["frames"] == 21 and out["finite"] is True
  assert out["fps"] == pytest.approx(out["frames"] / out["total_s"], rel=1e-2)
  assert 0 < out["ttff_s"] <= out["total_s"]
  assert "fps incl. decode" in proc.stdout


@pytest.mark.parametrize("flags, message", [
    (("--frames", "20"), "--frames=20 must be 4k+1"),
    (("--nfpb", "4"), "--nfpb=4 must divide the 21 latent frames"),
    (("--height", "472"), "must be multiples of 16"),
    (("--kv-buckets", "0"), "--kv-buckets must be >= 1, got 0"),
    (("--model", "nope"), "unknown DiT preset 'nope'"),
])
def test_bad_flags_are_one_line(flags, message):
  proc = _run(*flags, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_profile_sums_kernels_by_program_and_kind():
  """`--profile 1`: one traced run, kernel time per program (the DiT call `_forward`, the VAE steps, ...) with its
  kinds adding up to the program's time."""
  proc = _run("--small", "--profile", "1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  prof = out["profile"]
  assert prof["calls"] == 1 and out["command_buffers"] is False
  modules = {m["module"]: m for m in prof["modules"]}
  assert any("_forward" in name for name in modules), sorted(modules)
  assert any("decode" in name for name in modules), sorted(modules)
  for m in prof["modules"]:
    assert abs(sum(k["ms"] for k in m["kinds"]) - m["ms"]) <= 1e-6 * max(m["ms"], 1.0), m
  assert abs(sum(m["ms"] for m in prof["modules"]) - prof["kernel_ms"]) <= 1e-6 * prof["kernel_ms"]
  assert "kernels per run (1 traced)" in proc.stdout
