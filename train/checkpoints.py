"""Orbax checkpoints of the training loop (`train/loop.py`): the manager, resuming, and failed writes.

Resuming after a kill: orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it when complete,
so a save cut short leaves only that folder; `checkpoint_manager` logs it and removes it, and
`restore_or_create` takes the newest readable step. Before restoring, the step's array shapes are compared with
this config's train state, so a changed width or an EMA switched on is one line naming the arrays (and the
config changes, from the config recorded in each checkpoint's metadata) instead of a tensorstore traceback. A
step that fits but cannot be read is skipped for the one before. Writes that fail for lack of space or
permissions become one `WriteFailedError` line (`write_failure` reads tensorstore's `os_error_code`).
"""

import errno
import json
import os
import re
import tempfile

import jax
import orbax.checkpoint as ocp
from absl import logging

from wanjax.errors import UsageError


class WorkdirError(UsageError):
  """The folder the user named (--workdir, --output) cannot be written: read-only, no permission, not a folder
  (one line; the CLIs exit 2)."""


class WriteFailedError(WorkdirError):
  """A write into that folder failed during the run: full disk, quota, ... (one line; the run failed: exit 1)."""


TMP_MARK = ".orbax-checkpoint-tmp"   # orbax's suffix of a step folder still being written


def checkpoint_dir(workdir):
  return os.path.join(os.path.abspath(workdir), "checkpoints")


# errno values of a write that failed for a reason the user fixes (space, quota, permissions, read-only disk)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.ENOTDIR}


def write_failure(e):
  """`os.strerror` of the failed write behind `e` (e.g. 'No space left on device'), or None if `e` is no such
  failure. Orbax reports tensorstore write errors as ValueError whose text holds "os_error_code='28'"."""
  while e is not None:
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
      m = re.search(r"os_error_code='?(\d+)", str(e))
      code = int(m.group(1)) if m else None
    if code in _WRITE_ERRNOS:
      return os.strerror(code)
    e = e.__cause__ or e.__context__
  return None


def check_writable(folder, flag="--workdir", value=None):
  """Creates `folder` and writes (then removes) a probe file in it; a failure is one `WorkdirError` line naming
  `flag`=`value` (default: the folder)."""
  try:
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    value = folder if value is None else value
    where = f" ({e.filename})" if e.filename and os.path.abspath(e.filename) != os.path.abspath(value) else ""
    raise WorkdirError(f"{flag}={value} is not writable: {e.strerror or e}{where}") from None


def complete_steps(directory):
  """Steps whose checkpoint folder is complete (orbax renames `<step>.orbax-checkpoint-tmp` when done)."""
  try:
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    return []


def checkpoint_manager(workdir, *, keep=3, async_save=True, read_only=False) -> ocp.CheckpointManager:
  """Keep-last-K manager; orbax writes each step to `<step>.orbax-checkpoint-tmp` and renames it when complete
  (atomic). A tmp folder left by a killed save is logged here and removed (not with `read_only`)."""
  directory = checkpoint_dir(workdir)
  if not read_only:
    check_writable(directory, "--workdir", workdir)
  half = sorted(n for n in (os.listdir(directory) if os.path.isdir(directory) else ()) if TMP_MARK in n)
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         cleanup_tmp_directories=not read_only,
                                         enable_async_checkpointing=async_save, read_only=read_only)
  # The registered handler lets `item_metadata` read a step's array shapes before anything is restored. Read-only
  # managers (train.export) restore with `PyTreeRestore` into host arrays: without a handler the metadata is None,
  # orbax falls back to the saved shardings and a step written on more devices than this process has is unreadable.
  handler = ocp.PyTreeCheckpointHandler() if read_only else ocp.StandardCheckpointHandler()
  manager = ocp.CheckpointManager(directory, options=options, item_handlers=handler)
  if half:
    done = complete_steps(directory)
    logging.warning("skipping half-written checkpoint%s %s in %s (a save was interrupted%s); the last complete "
                    "checkpoint is %s", "s" * (len(half) > 1), ", ".join(half), directory,
                    "" if read_only else "; removed", f"step {done[-1]}" if done else "none: training starts anew")
  return manager


def abstract_sharded(abstract, shardings):
  """ShapeDtypeStructs carrying the target shardings: restore places every array straight into its shard."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _path(keys):
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


def _leaves(tree):
  return {_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def state_mismatch(saved, target):
  """(problems, dtype_changes) between a checkpoint's array metadata tree and the target state: problems are
  'path: (shape) in the checkpoint, (shape) here' / missing / extra entries, sorted."""
  a, b = _leaves(saved), _leaves(target)
  order = lambda k: (".opt_state." in f".{k}.", k)   # noqa: E731  (params before optimiser moments)
  problems = [f"{k}: {tuple(a[k].shape)} in the checkpoint, {tuple(b[k].shape)} here"
              for k in sorted(set(a) & set(b), key=order) if tuple(a[k].shape) != tuple(b[k].shape)]
  problems += [f"{k}: in the checkpoint, not in this config's state" for k in sorted(set(a) - set(b), key=order)]
  problems += [f"{k}: in this config's state, not in the checkpoint" for k in sorted(set(b) - set(a), key=order)]
  dtypes = [f"{k} {a[k].dtype} -> {b[k].dtype}" for k in sorted(set(a) & set(b))
            if getattr(a[k], "dtype", None) is not None and str(a[k].dtype) != str(b[k].dtype)]
  return problems, dtypes


def _flat_config(d, prefix=""):
  out = {}
  for k, v in (d or {}).items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# Settings a resumed run is expected to change (reported at info level; every other change is a warning).
CADENCE_KEYS = ("total_steps", "max_train_seconds", "checkpoint_every", "keep_checkpoints", "log_every",
                "async_checkpoints", "max_consecutive_nonfinite", "debug.sleep_per_step", "debug.nonfinite_steps")


def config_changes(old, new):
  """['key: old -> new', ...] between two configs as JSON data (nested dicts), sorted; cadence keys last."""
  a, b = _flat_config(old), _flat_config(new)
  keys = sorted(set(a) | set(b), key=lambda k: (k in CADENCE_KEYS, k))
  fmt = lambda v: json.dumps(v) if not isinstance(v, str) else repr(v)   # noqa: E731
  return [f"{k}: {fmt(a[k]) if k in a else '(absent)'} -> {fmt(b[k]) if k in b else '(absent)'}"
          for k in keys if a.get(k, KeyError) != b.get(k, KeyError)]


def saved_metadata(manager, step) -> dict:
  try:
    return dict(manager.metadata(step).custom_metadata or {})
  except Exception:   # noqa: BLE001  (checkpoints from before the config was recorded, unreadable metadata)
    return {}


def _item_tree(manager, step):
  meta = manager.item_metadata(step)
  return getattr(meta, "tree", meta)


def first_line(e, limit=300):
  text = str(e).strip().splitlines()
  text = text[0] if text else type(e).__name__
  return text[:limit] + ("..." if len(text) > limit else "")


def restore_or_create(manager, *, abstract_state, shardings, create, config=None):
  """Restores the latest readable checkpoint into the abstract sharded state, or builds a fresh one with
  `create()`. Returns (state, step restored or None).

  A checkpoint that does not fit this config's state (changed widths, EMA on/off, ...) is one `UsageError`
  naming the first mismatched arrays and the config changes since (`config`: this run's config as JSON data,
  compared with the one recorded in the checkpoint). A checkpoint that fits but cannot be read (missing or
  truncated files) is skipped with a warning for the next older one (and without orbax's 'Event loop is closed'
  tracebacks: `drop_closed_loop_errors`); once an older one restores, the unreadable newer folders are renamed
  `<step>.unreadable` so the run can save those steps again.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return create(), None
  drop_closed_loop_errors(reading=manager.directory)
  target = abstract_sharded(abstract_state, shardings)
  unreadable = []
  for step in steps:
    try:   # checked before restoring: a failed orbax restore prints pages of tensorstore tracebacks at exit
      saved = _item_tree(manager, step)
      if saved is None:
        raise ValueError("no array metadata")
    except Exception as e:   # noqa: BLE001  (orbax and tensorstore raise many types)
      unreadable.append((step, e))
      logging.warning("checkpoint step %d in %s is unreadable (%s); trying the one before", step,
                      manager.directory, first_line(e))
      continue
    problems, dtypes = state_mismatch(saved, target)
    if problems:
      saved_config = saved_metadata(manager, step).get("config")
      changes = config_changes(saved_config, config) if config and saved_config else []
      raise UsageError(
          f"checkpoint step {step} in {manager.directory} does not fit this config's train state: "
          f"{'; '.join(problems[:3])}{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}"
          + (f". Config changes since that checkpoint: {'; '.join(changes[:8])}" if changes else "")
          + ". Resume with the config that wrote it, or use a fresh --workdir")
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:   # noqa: BLE001
      unreadable.append((step, e))
      logging.warning("checkpoint step %d in %s is unreadable (%s); trying the one before", step,
                      manager.directory, first_line(e))
      continue
    _set_aside(manager, [s for s, _ in unreadable])
    _report_changes(manager, step, dtypes, config)
    logging.info("resumed from step %d (%s)", step, manager.directory)
    return state, step
  step, e = unreadable[0]
  raise UsageError(f"no readable checkpoint in {manager.directory} (step {step}: {first_line(e)}); move the "
                   f"folder aside to start anew, or fix it")


def _is_closed_loop_error(u):
  return isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"


_READ_DIRS = set()   # checkpoint folders this process reads: their sibling read errors are dropped (below)


def drop_closed_loop_errors(reading=None):
  """Stops one kind of orbax noise. Orbax reads (and writes) a checkpoint's arrays with asyncio.gather in an event
  loop that it closes as soon as one read fails; the reads still running finish in tensorstore's threads, and
  their callbacks, aimed at the closed loop, raise 'Event loop is closed' as unraisable exceptions, each one a
  traceback on stderr at some later time. This drops exactly those for the rest of the process (they can come any
  time after the read) and passes every other unraisable exception to the hook in place before.

  `reading`: a checkpoint folder about to be read. The other reads of a failed gather can fail too (every array
  of a corrupt step does); nobody awaits them, and asyncio logs each as "Task exception was never retrieved" with
  a traceback. Those records are dropped when their text names a folder passed here: the caller reports the
  first failure itself. Idempotent."""
  import sys
  if reading is not None:
    _READ_DIRS.add(str(reading))
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_errors", False):
    return

  def hook(u):
    if not _is_closed_loop_error(u):
      previous(u)

  hook.drops_closed_loop_errors = True
  sys.unraisablehook = hook
  # The same error can also surface as an asyncio task whose exception nobody retrieved: asyncio's default handler
  # logs it ("Task exception was never retrieved", with the traceback) on the "asyncio" logger.
  import logging as std_logging
  std_logging.getLogger("asyncio").addFilter(_ClosedLoopRecordFilter())


class _ClosedLoopRecordFilter:
  """Drops "asyncio" log records about a RuntimeError('Event loop is closed'), and unretrieved task errors that
  name a checkpoint folder being read (`_READ_DIRS`); passes every other record."""

  def filter(self, record):
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return False
    message = record.getMessage()
    if "RuntimeError('Event loop is closed')" in message:
      return False
    if "exception was never retrieved" in message:
      text = message + (str(exc) if exc is not None else "")
      return not any(d in text for d in _READ_DIRS)
    return True


def _set_aside(manager, steps):
  """Renames unreadable newer steps to `<step>.unreadable` (chief process; the others wait for it)."""
  if not steps:
    return
  for s in steps if jax.process_index() == 0 else ():
    src = os.path.join(str(manager.directory), str(s))
    dst = f"{src}.unreadable"
    n = 1
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.unreadable{n}"
    os.replace(src, dst)
    logging.warning("moved unreadable checkpoint step %d aside to %s", s, dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("wanjax_checkpoint_set_aside")
  manager.reload()


def _report_changes(manager, step, dtypes, config):
  if dtypes:
    logging.warning("resumed checkpoint step %d cast to this config's dtypes: %s%s", step, "; ".join(dtypes[:5]),
                    f" (and {len(dtypes) - 5} more)" if len(dtypes) > 5 else "")
  saved = saved_metadata(manager, step).get("config")
  if config is None or saved is None:
    return
  changes = config_changes(saved, config)
  cadence = [c for c in changes if c.split(":")[0] in CADENCE_KEYS]
  other = [c for c in changes if c not in cadence]
  if other:
    logging.warning("resuming step %d with a config that differs from the one that wrote it: %s", step,
                    "; ".join(other))
  if cadence:
    logging.info("resuming step %d with changed cadence: %s", step, "; ".join(cadence))


def save(manager, step, state, metadata=None):
  """Saves `state` as checkpoint `step`; `metadata` (JSON data) goes into the step's orbax metadata."""
  # Orbax copies device arrays to the host before the async write begins, so the state may be donated next.
  with jax.transfer_guard("allow"):
    manager.save(step, args=ocp.args.StandardSave(state), force=True, custom_metadata=metadata)


def write_error(e, what, manager):
  """A `WriteFailedError` for a failed write (full disk, ...), or None if `e` is something else."""
  reason = write_failure(e)
  if reason is None:
    return None
  done = complete_steps(str(manager.directory))
  return WriteFailedError(f"cannot write {what} in {os.path.dirname(str(manager.directory))}: {reason}. Free space "
                          f"(or fix the folder) and rerun the same command: it resumes from "
                          + (f"checkpoint step {done[-1]}" if done else "the start (no complete checkpoint yet)"))
