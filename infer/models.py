"""Resolves model paths for the inference CLIs: a converted wanjax directory is used as is; a raw torch
checkpoint (torch-layout `.safetensors`, `.pt/.pth`, shard folder or index) is converted once into a cache
folder and reused afterwards.

Cache key: hash of the absolute path, size and mtime of the checkpoint file(s), so editing or replacing the
file converts again. Default cache: `~/.cache/wanjax/converted/<hash>` (override with `cache_dir` or
`$WANJAX_CACHE`).
"""

import glob
import hashlib
import json
import os
import shutil
import tempfile

from absl import logging

from wanjax.errors import UsageError


def default_cache_dir() -> str:
  root = os.environ.get("WANJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wanjax")
  return os.path.join(root, "converted")


def is_converted(path) -> bool:
  """True for a wanjax model directory (config.json written by the converter, with a "family")."""
  cfg = os.path.join(path, "config.json")
  if not (os.path.isdir(path) and os.path.exists(cfg)):
    return False
  try:
    with open(cfg) as f:
      return "family" in json.load(f) and bool(glob.glob(os.path.join(path, "*.safetensors")))
  except (OSError, json.JSONDecodeError):
    return False


def _fingerprint(path) -> str:
  path = os.path.abspath(path)
  files = ([path] if os.path.isfile(path) else
           sorted(glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.json"))))
  if path.endswith(".index.json"):
    files += sorted(glob.glob(os.path.join(os.path.dirname(path), "*.safetensors")))
  h = hashlib.sha256()
  for f in files:
    st = os.stat(f)
    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:20]


def resolve_model(path, *, family=None, cache_dir=None, **convert_kwargs) -> str:
  """A converted directory for `path`, converting a raw torch checkpoint on first use (atomically: a
  temporary folder renamed into place, so an interrupted conversion is never reused)."""
  if not os.path.exists(path):
    raise UsageError(f"model path {path!r} does not exist")
  if is_converted(path):
    return path
  cache = os.path.join(cache_dir or default_cache_dir(), _fingerprint(path))
  if is_converted(cache):
    logging.info("using the cached conversion of %s: %s", path, cache)
    return cache
  from converters.convert import convert_checkpoint, summary_line  # imports torch lazily, only for .pt
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(cache), prefix=".tmp-")
  try:
    s = convert_checkpoint(path, tmp, family=family, progress=False, **convert_kwargs)
    logging.info("%s", summary_line(s))
    try:
      os.rename(tmp, cache)
    except OSError:   # another process finished the same conversion first
      if not is_converted(cache):
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  logging.info("converted %s into the cache %s", path, cache)
  return cache


def resolve_dit(path, cache_dir=None, **convert_kwargs) -> str:
  """Converted DiT directory for `path` (a converted directory or a raw torch checkpoint)."""
  return resolve_model(path, family="dit", cache_dir=cache_dir, **convert_kwargs)
