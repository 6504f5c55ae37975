"""Atomic publication of written files: a writer fills a temporary file beside the target (`tempfile.mkstemp`,
which creates it with mode 0600) and `publish` renames it into place with the permissions a plain `open()`
would have given it (0666 & ~umask), so outputs are readable by others exactly when the user's umask says so.
"""

import os

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
