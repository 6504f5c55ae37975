"""Atomic publication of written files: a writer fills a temporary file beside the target (`mkstemp`, created
with mode 0600) and `publish` renames it into place with the permissions a plain `open()` would have given it
(0666 & ~umask), so outputs are readable by others exactly when the user's umask says so.

Temporary files are hidden and named `.<target>.<pid>@<host>.<random>.tmp<ext>`, so a writer that was killed
(SIGKILL, power loss) leaves a file whose owner can be told dead. `sweep_temps` removes such leftovers, once per
folder and process, at the next atomic write into that folder: a temp file is stale when its pid is on this host
and no longer runs, or when it has not been written for `STALE_AGE_S` (other hosts sharing the folder, pids
reused, and the older names without a pid: `.<target>.<random>.tmp<ext>`, `.tmp-<random>.safetensors`). A
live writer's temp file is never removed: its process runs, and it keeps writing (so its mtime stays recent).
"""

import contextlib
import hashlib
import os
import re
import socket
import tempfile
import time

from absl import logging

FILE_MODE = 0o666
DIR_MODE = 0o777
STALE_AGE_S = 24 * 3600   # a temp file unwritten for a day has no live writer (pid-less names, other hosts)
# Our temp-file names: pid-stamped (`mkstemp`, used by every writer), and the pid-less ones earlier versions
# wrote (`.<target>.<random>.tmp<ext>`, and the safetensors streamer's `.tmp-<random>.safetensors`).
_PID_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+)\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")
_OLD_TEMPS = (re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$"),
              re.compile(r"^\.tmp-[A-Za-z0-9_]{8}\.safetensors$"))
_swept = set()   # folders this process has swept


def current_umask() -> int:
  """The process umask, read without changing it where the OS allows (Linux `/proc`); else set and restored."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)   # no race-free read elsewhere: set, then restore at once
  os.umask(mask)
  return mask


def publish(tmp, path):
  """chmod `tmp` to 0666 & ~umask (0777 & ~umask for a directory), then `os.replace(tmp, path)`."""
  mode = DIR_MODE if os.path.isdir(tmp) else FILE_MODE
  os.chmod(tmp, mode & ~current_umask())
  os.replace(tmp, path)


def host_tag() -> str:
  """This host's name as it appears in temp-file names (first label, [A-Za-z0-9_-] only), plus the pid
  namespace where Linux tells it: containers sharing a hostname (host networking) and a folder have separate pid
  spaces, and must not take each other's live writers for dead."""
  name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:40] or "host"
  try:
    return f"{name}-ns{os.stat('/proc/self/ns/pid').st_ino}"
  except OSError:
    return name


def mkstemp(path):
  """(fd, temp path): a new hidden temp file beside `path`, named with this process's pid and host (see the
  module docstring). Writers publish it with `publish(tmp, path)` or unlink it on failure."""
  folder = os.path.dirname(os.path.abspath(path))
  suffix = ".tmp" + os.path.splitext(path)[1]
  return tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{os.getpid()}@{host_tag()}.",
                          suffix=suffix)


def is_temp(name) -> bool:
  """Whether a file name is one of our temp-file names (pid-stamped or older pid-less ones)."""
  return bool(_PID_TEMP.match(name)) or any(p.match(name) for p in _OLD_TEMPS)


def _pid_runs(pid) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # another user's live process
    return True
  return True


def is_stale(path, *, now=None, max_age_s=STALE_AGE_S) -> bool:
  """Whether the temp file `path` has no live writer: its pid (this host) is gone, or it is older than
  `max_age_s`. A file that vanished meanwhile is not stale (there is nothing to remove)."""
  m = _PID_TEMP.match(os.path.basename(path))
  if m and m["host"] == host_tag() and int(m["pid"]) != os.getpid() and not _pid_runs(int(m["pid"])):
    return True
  try:
    return (now or time.time()) - os.stat(path).st_mtime > max_age_s
  except FileNotFoundError:
    return False


def sweep_temps(folder, *, everything=False, max_age_s=STALE_AGE_S) -> list:
  """Removes the stale temp files of our naming from `folder` (not recursive; never a directory) and returns
  their names, sorted. `everything=True` removes every one of them: only for a caller that holds the folder's
  lock, so that no other writer of ours can be live in it."""
  removed = []
  try:
    names = sorted(n for n in os.listdir(folder) if n.startswith(".") and is_temp(n))
  except FileNotFoundError:
    return removed
  now = time.time()
  for name in names:
    path = os.path.join(folder, name)
    if not os.path.isfile(path) or not (everything or is_stale(path, now=now, max_age_s=max_age_s)):
      continue
    try:
      os.unlink(path)
    except FileNotFoundError:   # its writer finished or another sweeper was first
      continue
    removed.append(name)
  if removed:
    logging.info("removed %d stale temp file(s) of interrupted writes in %s: %s", len(removed), folder,
                 ", ".join(removed))
  return removed


def sweep_once(folder):
  """`sweep_temps(folder)` the first time this process writes into `folder`."""
  folder = os.path.abspath(folder)
  if folder not in _swept:
    _swept.add(folder)
    sweep_temps(folder)


@contextlib.contextmanager
def atomic_open(path, mode="w", *, encoding=None):
  """Opens a temporary file beside `path` for writing; on a clean exit it is flushed, fsynced and published
  at `path` (`publish`), on an exception removed. The folder is created if needed (and its stale temp files
  of earlier, killed writers removed: `sweep_once`). Yields the file object."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open mode={mode!r}; valid: 'w', 'wb'")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  sweep_once(folder)
  fd, tmp = mkstemp(path)
  try:
    with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    publish(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def try_lock(path):
  """An open file descriptor holding an exclusive advisory lock (`flock`) on `path` (created if needed), or
  None when another open file holds it. The lock lasts until `os.close(fd)` or the process ends (even killed).
  Raises OSError where the file cannot be created or the filesystem has no locks."""
  import fcntl
  fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)   # the umask applies
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  except OSError:
    os.close(fd)
    raise
  return fd


def file_sha256(path) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
