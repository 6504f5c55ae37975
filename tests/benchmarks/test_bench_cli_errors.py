"""Every benchmark script refuses a bad flag in one line on stderr with exit code 2 (`benchmarks/cli.py`), before
building a model or starting a child process: unknown presets (a `UsageError` from the config lookup, formerly a
traceback, or one traceback per child process), frame counts that are not 4k+1, unknown modes and malformed lists
(formerly run anyway, or a `ValueError` traceback)."""

import os
import subprocess
import sys

import pytest

from benchmarks import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [
    ("dit_forward.py", ("--model", "nope"), "error: unknown DiT preset 'nope'"),
    ("dit_layer_breakdown.py", ("--model", "nope"), "error: unknown DiT preset 'nope'"),
    ("sample.py", ("--frames", "80"), "--frames=80 must be 4k+1 (e.g. 77 or 81"),
    ("sample.py", ("--width", "840"), "must be positive multiples of 16"),
    ("vae_decode.py", ("--modes", "chunked,bogus"), "--modes='chunked,bogus': a comma list of chunked, tiled, full"),
    ("vae_decode.py", ("--tile", "32"), "--tile='32' must be two latent sizes"),
    ("vae_decode.py", ("--model", "nope"), "error: unknown VAE preset 'nope'"),
    ("t5_encode.py", ("--batches", "1,x"), "--batches must be a comma list of integers >= 1, got '1,x'"),
    ("convert_memory.py", ("--preset", "nope"), "error: unknown DiT preset 'nope'"),
]


@pytest.mark.parametrize("script, flags, message", CASES, ids=[f"{c[0]}{' '.join(c[1])}" for c in CASES])
def test_bad_flag_is_one_line(script, flags, message):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert message in proc.stderr, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "run failed" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
  # Refused before anything ran: no result line.
  assert not any(line.startswith("{") for line in proc.stdout.splitlines()), proc.stdout[-3000:]


def test_helpers():
  import argparse
  p = argparse.ArgumentParser()
  assert cli.int_list(p, "--x", "1, 2,4") == [1, 2, 4]
  assert cli.int_list(p, "--x", "", allow_empty=True) == []
  for bad in ("", "0", "1,-2", "a"):
    with pytest.raises(SystemExit):
      cli.int_list(p, "--x", bad)
  cli.check_frames(p, 81)
  cli.check_frames(p, 1)
  for bad in (0, 80, 82):
    with pytest.raises(SystemExit):
      cli.check_frames(p, bad)
  with pytest.raises(SystemExit) as e:
    cli.exit_if_failed(["jax"])
  assert e.value.code == 1
  cli.exit_if_failed([])
