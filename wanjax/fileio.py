"""Atomic publication of written files: a writer fills a temporary file beside the target (`tempfile.mkstemp`,
which creates it with mode 0600) and `publish` renames it into place with the permissions a plain `open()`
would have given it (0666 & ~umask), so outputs are readable by others exactly when the user's umask says so.
"""

import contextlib
import os
import tempfile

FILE_MODE = 0o666
DIR_MODE = 0o777


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


@contextlib.contextmanager
def atomic_open(path, mode="w", *, encoding=None):
  """Opens a temporary file beside `path` for writing; on a clean exit it is flushed, fsynced and published
  at `path` (`publish`), on an exception removed. The folder is created if needed. Yields the file object."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open mode={mode!r}; valid: 'w', 'wb'")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp" + suffix)
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
