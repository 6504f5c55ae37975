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


def out_of_memory_message(e, advice=""):
  """One line for an accelerator out-of-memory error (XLA's RESOURCE_EXHAUSTED status), or None for any other
  exception: the device, the allocation that failed, the share of the device jax may use (where the backend
  reports it) and `advice`, what the caller's settings can change. XLA's own text is a screen of allocator
  statistics; the CLIs print this instead."""
  text = str(e)
  if "RESOURCE_EXHAUSTED" not in text:
    return None
  import re
  import jax
  first = text.strip().splitlines()[0]   # the status line; XLA appends allocator statistics below it
  m = re.search(r"allocate\s+([\d.]+\s*[KMGT]i?B|\d+\s*bytes)", first)
  what = f"XLA could not allocate {m.group(1)}" if m else first.split("RESOURCE_EXHAUSTED:", 1)[-1].strip()[:200]
  kind, limit = "the device", None
  try:   # the backend itself may be what failed: then say less rather than raise again
    dev = jax.devices()[0]
    kind = dev.device_kind
    limit = (dev.memory_stats() or {}).get("bytes_limit")
  except Exception:   # noqa: BLE001  (also: not every backend reports memory statistics)
    pass
  share = (f" (jax may use {limit / 2**30:.1f} GiB of it; XLA_PYTHON_CLIENT_MEM_FRACTION sets that share, "
           f"0.75 unless set)" if limit else "")
  line = f"out of memory on {kind}: {what}{share}."
  return " ".join(f"{line} {advice}".split())
