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
    ("dit_qkv_variants.py", ("--model", "nope"), "error: unknown DiT preset 'nope'"),
    ("dit_block_variants.py", ("--model", "nope"), "error: unknown DiT preset 'nope'"),
    ("dit_block_variants.py", ("--variants", "current,fast"), "--variants: unknown 'fast'; valid: current,"),
    ("dit_block_variants.py", ("--flag-sets", ""), "--flag-sets: unknown empty list; valid: default,"),
    ("sample.py", ("--frames", "80"), "--frames=80 must be 4k+1 (e.g. 77 or 81"),
    ("sample.py", ("--width", "840"), "must be positive multiples of 16"),
    ("vae_decode.py", ("--modes", "chunked,bogus"), "--modes='chunked,bogus': a comma list of chunked, tiled, full"),
    ("vae_decode.py", ("--tile", "32"), "--tile='32' must be two latent sizes"),
    ("vae_decode.py", ("--model", "nope"), "error: unknown VAE preset 'nope'"),
    ("t5_encode.py", ("--batches", "1,x"), "--batches must be a comma list of integers >= 1, got '1,x'"),
    ("convert_memory.py", ("--preset", "nope"), "error: unknown DiT preset 'nope'"),
    # --small chooses the model itself: naming one as well was silently overridden (the tiny model ran).
    *((script, (flag, value, "--small"), f"--small runs {runs} and cannot be combined with {flag}='{value}'")
      for script, flag, value, runs in (
          ("dit_forward.py", "--model", "t2v_14b", "the 'tiny' preset"),
          ("dit_layer_breakdown.py", "--model", "t2v_14b", "a dim-64, 2-head block on a 3x4x6 latent"),
          ("dit_qkv_variants.py", "--model", "t2v_14b", "a dim-64, 2-head block on a 3x4x6 latent"),
          ("dit_block_variants.py", "--model", "t2v_14b", "a dim-64, 2-head block on a 3x4x6 latent"),
          ("sample.py", "--model", "t2v_1_3b", "the 'tiny' preset"),
          ("ar_sample.py", "--model", "t2v_14b", "the 'tiny' preset"),
          ("vae_decode.py", "--model", "wan21", "the 'tiny' preset"),
          ("dmd_step.py", "--model", "t2v_14b", "dmd_smoke's tiny models"),
          ("t5_encode.py", "--config", "umt5_xxl", "the 'tiny' preset"))),
    ("attention_fp8.py", ("--tokens", "512", "--kv-lengths", "256,1024"),
     "--kv-lengths 1024: longer than the --tokens=512 key buffer"),
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


def test_apply_small_sets_defaults_keeps_given_flags_and_says_so(capsys):
  import argparse
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="t2v_1_3b")
  p.add_argument("--frames", type=int, default=81)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--small", action="store_true")
  small = dict(model="tiny", frames=21, iters=1)
  # Without --small nothing changes and nothing is printed.
  args = cli.apply_small(p, p.parse_args(["--iters", "3"]), small, preset="model", argv=["--iters", "3"])
  assert (args.model, args.frames, args.iters) == ("t2v_1_3b", 81, 3) and capsys.readouterr().err == ""
  # A flag given explicitly, even at its default value or abbreviated, keeps its value and is listed as kept.
  argv = ["--small", "--iters=5", "--fr", "41"]
  args = cli.apply_small(p, p.parse_args(argv), small, preset="model", argv=argv)
  assert (args.model, args.frames, args.iters) == ("tiny", 41, 5)
  assert capsys.readouterr().err.strip() == "--small: --model=tiny; kept from the command line: --frames=41 --iters=5"
  # The model flag itself (at its default value too) is an error naming both flags.
  for argv in (["--small", "--model", "t2v_1_3b"], ["--model=t2v_14b", "--small"]):
    with pytest.raises(SystemExit) as e:
      cli.apply_small(p, p.parse_args(argv), small, preset="model", argv=argv)
    assert e.value.code == 2
    assert "--small runs the 'tiny' preset and cannot be combined with --model=" in capsys.readouterr().err
