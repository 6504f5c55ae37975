"""Crash-safe replacement of the files of a model folder (`model.safetensors` + `config.json`), shared by the
converters (`converters/engine.py`) and the trainers' export (`train/export.py`).

Writing into a folder that already holds a model must never leave the old `config.json` beside the new
weights, nor lose the old pair before the new one is complete. So:
  1. the new files are written complete (fsynced) into `<out>/.convert-staging/`; a failure or a crash here
     leaves the old pair untouched (a later run into the folder removes the partial staging folder);
  2. a journal `<out>/.convert-pending.json` names the files being replaced;
  3. the renames: old `config.json` aside (`.config.json.old`) first, old weights aside, new weights in, new
     `config.json` in last; then the old files, the staging folder and the journal are removed.
A crash during 3 leaves either the old pair, no `config.json` at all (loaders refuse the folder), or the new
pair; the next conversion or export into the folder (or `recover`) finishes the replacement from the journal
and logs a warning saying so. The folder is locked (`flock`) while a conversion or export writes into it, so a
second one into the same folder fails at once instead of mixing files. (The staging and journal names keep
their historical `.convert-` prefix so that folders interrupted by older versions still recover.)
"""
import contextlib
import fcntl
import glob
import json
import os
import shutil

from absl import logging

from wanjax.errors import CheckpointError, UsageError
from wanjax.fileio import atomic_open

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STAGING = ".convert-staging"
JOURNAL = ".convert-pending.json"


def _backup(name) -> str:
  return f".{name}.old"


def _fsync_dir(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


@contextlib.contextmanager
def _locked(out_dir):
  """Holds an exclusive flock on the folder itself. Where the filesystem cannot lock a directory (NFS emulates
  flock with byte-range locks, which need a file open for writing; some FUSE and Lustre mounts have none), the
  replacement goes on unlocked with a warning: it is still crash-safe, only not guarded against a second writer."""
  fd = os.open(out_dir, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UsageError(f"another conversion or export is writing into {out_dir!r}; wait for it to finish or "
                       f"write into another folder") from None
    except OSError as e:
      logging.warning("%s: this filesystem cannot lock the folder (%s); writing without a lock, so do not run a "
                      "second conversion or export into it meanwhile", out_dir, e.strerror or e)
    yield
  finally:
    os.close(fd)   # closing the descriptor releases the lock


def _finish(out_dir, names):
  """Runs, or resumes after a crash (each rename is skipped once done), the renames of a journalled
  replacement, then removes the old files, the staging folder and the journal."""
  final = lambda n: os.path.join(out_dir, n)  # noqa: E731
  new = lambda n: os.path.join(out_dir, STAGING, n)  # noqa: E731
  order = sorted(names, key=lambda n: n != CONFIG)   # config.json first out, last in
  for n in order:
    if os.path.exists(new(n)) and os.path.exists(final(n)):
      os.replace(final(n), final(_backup(n)))
  for n in reversed(order):
    if os.path.exists(new(n)):
      os.replace(new(n), final(n))
  _fsync_dir(out_dir)
  missing = [n for n in names if not os.path.exists(final(n))]
  if missing:   # staged files deleted by hand: roll back to the previous pair where it was kept, drop the journal
    for n in names:
      if os.path.exists(final(_backup(n))):
        os.replace(final(_backup(n)), final(n))
    shutil.rmtree(os.path.join(out_dir, STAGING), ignore_errors=True)
    os.unlink(final(JOURNAL))
    _fsync_dir(out_dir)
    kept = all(os.path.exists(final(n)) for n in names)
    raise CheckpointError(f"{out_dir}: an interrupted conversion or export could not be finished: its new "
                          f"files in {STAGING}/ were gone; " + ("the previous files are back in place" if kept
                          else "the folder holds no complete model") + "; convert or export into it again")
  for n in names:
    if os.path.exists(final(_backup(n))):
      os.unlink(final(_backup(n)))
  shutil.rmtree(os.path.join(out_dir, STAGING), ignore_errors=True)
  os.unlink(final(JOURNAL))
  _fsync_dir(out_dir)


def _recover(out_dir) -> list:
  journal = os.path.join(out_dir, JOURNAL)
  staging = os.path.join(out_dir, STAGING)
  if os.path.exists(journal):
    try:
      with open(journal) as f:
        names = [str(n) for n in json.load(f)["replace"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"{journal}: unreadable journal of an interrupted conversion or export ({e}); delete "
                            f"it and {STAGING}/ and convert or export again into this folder") from None
    _finish(out_dir, names)
    logging.warning("%s: an earlier conversion or export was interrupted while replacing its files; finished it "
                    "(%s now hold its result)", out_dir, " and ".join(names))
    return names
  if os.path.isdir(staging):
    shutil.rmtree(staging)
    logging.warning("%s: removed the partial files of an earlier conversion or export that was interrupted before "
                    "it had written them all (the folder's previous files were not touched)", out_dir)
  return []


def recover(out_dir) -> list:
  """Finishes a replacement that a crash interrupted in `out_dir` (see the module docstring) and removes the
  partial files of a conversion or export that died earlier; returns the file names it put in place (empty if none)."""
  if not os.path.isdir(out_dir):
    return []
  with _locked(out_dir):
    return _recover(out_dir)


def check_no_other_weights(out_dir):
  """One line when `out_dir` already holds `*.safetensors` other than `model.safetensors`: the loaders read
  every safetensors file of a model folder, so writing a model beside them would mix two."""
  foreign = sorted(os.path.basename(f) for f in glob.glob(os.path.join(out_dir, "*.safetensors"))
                   if os.path.basename(f) != WEIGHTS)
  if foreign:
    raise UsageError(f"--out {out_dir}: the folder already holds other safetensors files {foreign} (loaders read "
                     f"every *.safetensors of a model folder); choose an empty folder")


@contextlib.contextmanager
def staging(out_dir):
  """Locks `out_dir` (created if missing), finishes or cleans up an interrupted earlier conversion or export, and yields
  an empty staging folder inside it. The body writes the new files there and calls `commit`; an exception
  before `commit` removes the staging folder and leaves the folder's previous files untouched."""
  os.makedirs(out_dir, exist_ok=True)
  with _locked(out_dir):
    _recover(out_dir)
    stage = os.path.join(out_dir, STAGING)
    os.makedirs(stage)
    try:
      yield stage
    except BaseException:
      if not os.path.exists(os.path.join(out_dir, JOURNAL)):
        shutil.rmtree(stage, ignore_errors=True)
      raise


def commit(out_dir, names):
  """Replaces `out_dir/<name>` by `out_dir/.convert-staging/<name>` for every name, crash-safely (journal first);
  call inside `staging(out_dir)` once every staged file is complete."""
  missing = [n for n in names if not os.path.isfile(os.path.join(out_dir, STAGING, n))]
  if missing:
    raise AssertionError(f"commit: staged files {missing} not written")
  _fsync_dir(os.path.join(out_dir, STAGING))
  with atomic_open(os.path.join(out_dir, JOURNAL), "w") as f:
    json.dump({"replace": list(names)}, f)
  _fsync_dir(out_dir)
  _finish(out_dir, names)
