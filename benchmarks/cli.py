"""What every benchmark script does with a bad input: one line on stderr naming the value at fault, exit code 2
(as `infer.sample` and argparse do), instead of a traceback. Also the checks that a script running its parts in
subprocesses makes up front, so that a bad flag fails once, before any child starts, and what `--small` sets
(`apply_small`: a flag given explicitly is kept and listed, the model flag it replaces is an error)."""

import argparse
import sys


def run(main):
  """Calls `main()`; a `UsageError` (unknown preset, bad shape, ...) becomes `error: <message>` and exit 2."""
  from wanjax.errors import UsageError
  try:
    main()
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def int_list(parser, flag, text, allow_empty=False):
  """`"1,2,4"` -> [1, 2, 4]; anything else is a parser error naming `flag` (all values must be >= 1)."""
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = None
  if values is None or (not values and not allow_empty) or any(v < 1 for v in values):
    parser.error(f"{flag} must be a comma list of integers >= 1, got {text!r}")
  return values


def check_frames(parser, frames, flag="--frames"):
  """Pixel frame counts of the Wan VAE are 4k+1."""
  if frames < 1 or (frames - 1) % 4:
    from wanjax.video import frame_count_hint
    parser.error(f"{flag}={frames} must be 4k+1 ({frame_count_hint(frames)}; 81 for Wan2.1)")


def exit_if_failed(failed):
  """Exit 1 naming the parts whose subprocess failed (their stderr was printed above), after the JSON line."""
  if failed:
    print(f"error: {', '.join(failed)} run failed (see above)", file=sys.stderr)
    sys.exit(1)


def run_child(cmd, *, preallocate=True):
  """Runs one part of a benchmark in a subprocess (so each has the device and its memory to itself). Returns
  (result, proc): the dict of the child's last `RESULT {json}` stdout line, or None when it failed or printed none.
  `preallocate=False` keeps XLA from taking most of the GPU up front (peak-memory figures stay the part's own)."""
  import json
  import os
  import subprocess
  env = None if preallocate else dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  return (json.loads(lines[-1][len("RESULT "):]) if lines and not proc.returncode else None), proc


def child_failed(what, proc, file=sys.stdout, tail=3000):
  """Prints that the `what` part failed: its exit code and the end of its stderr."""
  print(f"{what} run failed (exit {proc.returncode}):\n{proc.stderr[-tail:]}", file=file)


_UNSET = object()


def given_flags(parser, dests, argv=None) -> set:
  """The `dests` among `dests` whose flag the command line gives explicitly (even at its default value)."""
  ns = argparse.Namespace(**{d: _UNSET for d in dests})
  parser.parse_args(sys.argv[1:] if argv is None else argv, namespace=ns)
  return {d for d in dests if getattr(ns, d) is not _UNSET}


def _flag(parser, dest):
  return next(a.option_strings[-1] for a in parser._actions if a.dest == dest)


def apply_small(parser, args, settings, *, preset=None, runs=None, argv=None):
  """`--small`: sets `settings` ({dest: value}) on `args`, and says so on stderr in one line.

  `preset` (a dest, e.g. "model") is the flag --small replaces by its own model (`runs` describes it; default
  the preset named in `settings`): giving it as well is a parser error naming both (`--model t2v_14b --small`
  used to run the tiny model without a word). Any other flag of `settings` that the command line gives keeps
  its value, and the line lists it as kept. Returns `args`."""
  if not args.small:
    return args
  dests = list(settings) + ([preset] if preset and preset not in settings else [])
  given = given_flags(parser, dests, argv)
  if preset in given:
    flag, value = _flag(parser, preset), getattr(args, preset)
    runs = runs or f"the {settings[preset]!r} preset"
    parser.error(f"--small runs {runs} and cannot be combined with {flag}={value!r}; drop --small to benchmark "
                 f"{value!r}, or drop {flag}")
  changed, kept = [], []
  for dest, value in settings.items():
    if dest in given:
      kept.append(f"{_flag(parser, dest)}={getattr(args, dest)}")
    else:
      setattr(args, dest, value)
      changed.append(f"{_flag(parser, dest)}={value}")
  print("--small: " + " ".join(changed + ([f"({runs})"] if runs else []))
        + (f"; kept from the command line: {' '.join(kept)}" if kept else ""), file=sys.stderr, flush=True)
  return args
