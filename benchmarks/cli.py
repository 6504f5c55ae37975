"""What every benchmark script does with a bad input: one line on stderr naming the value at fault, exit code 2
(as `infer.sample` and argparse do), instead of a traceback. Also the checks that a script running its parts in
subprocesses makes up front, so that a bad flag fails once, before any child starts."""

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
