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


# Where XLA's out-of-memory text names the device: "... with allocator GPU_3_bfc on device 3." (the PjRt GPU
# client's BFC allocator), "... on device ordinal 3" (StreamExecutor), "TPU_3" / "GPU:3" (device names). The number
# is the local device ordinal.
_OOM_DEVICE = (r"\bon device (?:ordinal )?(\d+)\b", r"\b(?:GPU|TPU)_(\d+)_bfc\b", r"\b(?:GPU|TPU)[_:](\d+)\b")


def _oom_device(text, devices):
  """The local device XLA's text names, or None."""
  import re
  for pattern in _OOM_DEVICE:
    m = re.search(pattern, text)
    if m:
      n = int(m.group(1))
      for d in devices:
        hw = getattr(d, "local_hardware_id", None)
        if (d.id if hw is None else hw) == n:
          return d
  return None


def out_of_memory_message(e, advice=""):
  """One line for an accelerator out-of-memory error (XLA's RESOURCE_EXHAUSTED status), or None for any other
  exception: the device, the allocation that failed, the share of the device jax may use (where the backend
  reports it) and `advice`, what the caller's settings can change. XLA's own text is a screen of allocator
  statistics; the CLIs print this instead. On a host with several local devices the line names the one XLA's
  text names, else says it was one of them."""
  text = str(e)
  if "RESOURCE_EXHAUSTED" not in text:
    return None
  import re
  import jax
  first = text.strip().splitlines()[0]   # the status line; XLA appends allocator statistics below it
  m = re.search(r"allocate\s+(?:request for\s+)?([\d.]+\s*[KMGT]i?B|\d+\s*bytes)", first)
  what = f"XLA could not allocate {m.group(1)}" if m else first.split("RESOURCE_EXHAUSTED:", 1)[-1].strip()[:200]
  where, limit, of = "the device", None, "it"
  try:   # the backend itself may be what failed: then say less rather than raise again
    devices = jax.local_devices()
    dev = (_oom_device(first, devices) or _oom_device(text, devices)) if len(devices) > 1 else devices[0]
    if dev is not None:
      where = dev.device_kind + (f" (device {dev.id})" if len(devices) > 1 else "")
    else:   # several devices and the text does not say which: all local devices are of one kind
      dev = devices[0]
      where, of = f"one of the {len(devices)} local {dev.device_kind} devices", "each"
    limit = (dev.memory_stats() or {}).get("bytes_limit")
  except Exception:   # noqa: BLE001  (also: not every backend reports memory statistics)
    pass
  share = (f" (jax may use {limit / 2**30:.1f} GiB of {of}; XLA_PYTHON_CLIENT_MEM_FRACTION sets that share, "
           f"0.75 unless set)" if limit else "")
  line = f"out of memory on {where}: {what}{share}."
  return " ".join(f"{line} {advice}".split())
