"""User-facing error types.

`UsageError` covers every problem the user can fix (bad flag, bad file, wrong checkpoint). CLIs catch it and
print one line with a non-zero exit; library code raises it with a message that names the value at fault,
what is valid, and the fix. `assert` is only for internal invariants.
"""


class UsageError(ValueError):
  """A problem with the user's input: flags, files, shapes or checkpoints."""


class CheckpointError(UsageError):
  """A checkpoint whose layout, keys, shapes or dtypes do not match what was expected."""


def format_key_problems(problems, limit=50):
  """Formats `(key, detail)` pairs as sorted lines, truncated after `limit` with a count of the rest."""
  problems = sorted(problems)
  lines = [f"  {k}: {d}" if d else f"  {k}" for k, d in problems[:limit]]
  if len(problems) > limit:
    lines.append(f"  ... and {len(problems) - limit} more")
  return "\n".join(lines)
