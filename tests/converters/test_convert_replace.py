"""Converting into a folder that already holds a converted model (`wanjax/model_dir.py`): a crash at any rename
never leaves the old config beside the new weights (formerly: new `model.safetensors` published, then a crash
before `config.json` left a mismatched pair), the next run into the folder finishes or cleans up and says so,
and a second conversion into a folder being written is refused."""

import dataclasses
import fcntl
import logging
import os
import subprocess
import sys

import pytest

from converters.convert import convert_checkpoint
from tests.converters.dit_fixtures import random_original
from wanjax import model_dir
from wanjax.checkpoint import save_tensors
from wanjax.dit.config import PRESETS
from wanjax.errors import CheckpointError, UsageError

TINY = PRESETS["tiny"]
NEW = dataclasses.replace(TINY, num_layers=2)   # the new model differs in shape: a mixed pair would not load
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The renames of a conversion into an existing folder, in order, by destination: staged weights, staged config,
# journal, old config aside, old weights aside, new weights in, new config in. A crash at one of the first three
# leaves the old pair; from the fourth on the journal is in place and the new pair wins.
RENAMES = (f"{model_dir.STAGING}/model.safetensors", f"{model_dir.STAGING}/config.json", model_dir.JOURNAL,
           ".config.json.old", ".model.safetensors.old", "model.safetensors", "config.json")
JOURNALLED = 3


def _convert(src, out):
  return convert_checkpoint(str(src), str(out), num_heads=2, progress=False)


def _visible(folder):
  return {n: (folder / n).read_bytes() for n in os.listdir(folder) if not n.startswith(".")}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  d = tmp_path_factory.mktemp("pairs")
  save_tensors(str(d / "old.safetensors"), random_original(TINY, seed=3))
  save_tensors(str(d / "new.safetensors"), random_original(NEW, seed=4))
  _convert(d / "old.safetensors", d / "ref_old")
  _convert(d / "new.safetensors", d / "ref_new")
  return d, _visible(d / "ref_old"), _visible(d / "ref_new")


class _Crash(BaseException):
  """Stands for the process dying: nothing catches it as an error."""


def _crash_replacing(d, out, monkeypatch, at):
  """Converts the old model into `out`, then the new one with the process 'dying' at the rename onto `at`
  (a path relative to `out`)."""
  _convert(d / "old.safetensors", out)
  real = os.replace

  def crashing(a, b):
    if os.path.relpath(b, out) == at:
      raise _Crash
    return real(a, b)

  monkeypatch.setattr(os, "replace", crashing)
  with pytest.raises(_Crash):
    _convert(d / "new.safetensors", out)
  monkeypatch.setattr(os, "replace", real)


@pytest.mark.parametrize("k", range(len(RENAMES) + 1), ids=[*RENAMES, "no-crash"])
def test_crash_at_each_rename_never_mixes_and_next_run_finishes(pairs, tmp_path, monkeypatch, caplog, k):
  d, old, new = pairs
  out = tmp_path / "out"
  _convert(d / "old.safetensors", out)
  real, done = os.replace, []

  def crashing(a, b):
    rel = os.path.relpath(b, out)
    if k < len(RENAMES) and rel == RENAMES[k]:
      raise _Crash
    done.append(rel)
    return real(a, b)

  monkeypatch.setattr(os, "replace", crashing)
  crashed = False
  try:
    _convert(d / "new.safetensors", out)
  except _Crash:
    crashed = True
  monkeypatch.setattr(os, "replace", real)
  assert crashed == (k < len(RENAMES)) and [r for r in done if r in RENAMES] == list(RENAMES[:k]), done
  seen = _visible(out)
  # Either complete pair, or no config.json at all (loaders refuse the folder) - never old and new mixed.
  assert seen in (old, new) or "config.json" not in seen, (k, sorted(seen))
  # The next run into the folder (one that then fails: its --src does not exist) first finishes the replacement.
  caplog.clear()
  with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError, match="does not exist"):
    _convert(d / "missing.safetensors", out)
  assert _visible(out) == (new if k >= JOURNALLED else old), k
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]   # no journal, backup or staging left
  finished = "conversion or export was interrupted while replacing its files; finished it" in caplog.text
  assert finished == (JOURNALLED <= k < len(RENAMES)), caplog.text


def test_real_crash_between_renames_then_cli_rerun(pairs, tmp_path):
  """The process dies (os._exit) after the old weights went aside and before the new ones came in; the user's
  next CLI run into the folder says it finished the interrupted replacement and converts."""
  d, old, new = pairs
  out = tmp_path / "out"
  _convert(d / "old.safetensors", out)
  script = ("import os, sys\n"
            "from converters.convert import convert_checkpoint\n"
            "real, final = os.replace, os.path.join(sys.argv[2], 'model.safetensors')\n"
            "def crash(a, b):\n"
            "  if b == final:\n"
            "    os._exit(17)\n"
            "  return real(a, b)\n"
            "os.replace = crash\n"
            "convert_checkpoint(sys.argv[1], sys.argv[2], num_heads=2, progress=False)\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-c", script, str(d / "new.safetensors"), str(out)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 17, r.stderr[-2000:]
  assert _visible(out) == {} and {model_dir.JOURNAL, model_dir.STAGING} <= set(os.listdir(out))
  r = subprocess.run([sys.executable, "-m", "converters.convert", f"--src={d / 'old.safetensors'}", f"--out={out}",
                      "--num-heads=2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "an earlier conversion or export was interrupted while replacing its files; finished it" in r.stderr
  assert _visible(out) == old and sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


def test_partial_staging_of_a_dead_run_is_removed(pairs, tmp_path, caplog):
  """A run killed while streaming leaves a partial file in the staging folder and no journal: the next run
  removes it, says so, and the previous pair is untouched."""
  d, old, _ = pairs
  out = tmp_path / "out"
  _convert(d / "old.safetensors", out)
  (out / model_dir.STAGING).mkdir()
  (out / model_dir.STAGING / ".tmp-abc.safetensors").write_bytes(b"\0" * 100)
  with caplog.at_level(logging.WARNING), pytest.raises(CheckpointError, match="does not exist"):
    _convert(d / "missing.safetensors", out)
  assert "removed the partial files of an earlier conversion or export" in caplog.text
  assert _visible(out) == old and sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


def test_second_conversion_into_a_folder_being_written_is_refused(pairs, tmp_path):
  d, old, _ = pairs
  out = tmp_path / "out"
  _convert(d / "old.safetensors", out)
  fd = os.open(out, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)   # what a running conversion holds
    with pytest.raises(UsageError, match="another conversion or export is writing into .*; wait for it to finish"):
      _convert(d / "new.safetensors", out)
  finally:
    os.close(fd)
  assert _visible(out) == old
  _convert(d / "new.safetensors", out)   # the lock is gone with its holder


def test_loader_names_an_interrupted_replacement(pairs, tmp_path, monkeypatch):
  """Between "old config aside" and "new config in" the folder has no config.json; the sampler's loader must
  not take it for a raw checkpoint to convert, but say what happened and how to finish it."""
  from infer.models import resolve_dit
  d, _, _ = pairs
  out = tmp_path / "out"
  _crash_replacing(d, out, monkeypatch, "model.safetensors")
  with pytest.raises(UsageError, match=rf"model folder '{out}' holds \.convert-pending\.json: a conversion or export "
                                       r"into it was interrupted .* run the same `python -m converters\.convert` "
                                       r"or `python -m train\.export` command \(--out .*\) again to finish it"):
    resolve_dit(str(out), cache_dir=str(tmp_path / "cache"))
  assert not (tmp_path / "cache").exists()


def test_filesystem_without_directory_locks_converts_with_a_warning(pairs, tmp_path, monkeypatch, caplog):
  """NFS cannot flock a directory (EBADF), some mounts have no locks (ENOLCK): the replacement still runs,
  crash-safe, with a warning instead of an OSError traceback."""
  import errno
  d, _, new = pairs
  out = tmp_path / "out"
  _convert(d / "old.safetensors", out)

  def no_locks(fd, op):
    raise OSError(errno.EBADF, "Bad file descriptor")

  monkeypatch.setattr(fcntl, "flock", no_locks)
  with caplog.at_level(logging.WARNING):
    _convert(d / "new.safetensors", out)
  assert _visible(out) == new and "cannot lock the folder (Bad file descriptor); writing without a lock" in caplog.text


def test_journal_whose_staged_files_were_deleted_rolls_back_once(pairs, tmp_path, monkeypatch):
  """A user deleted .convert-staging/ after a crash that left the journal: the next run restores the previous
  pair, drops the journal and says so once; the run after converts normally (formerly the same error forever)."""
  import shutil
  d, old, new = pairs
  out = tmp_path / "out"
  _crash_replacing(d, out, monkeypatch, ".model.safetensors.old")
  shutil.rmtree(out / model_dir.STAGING)
  with pytest.raises(CheckpointError, match=r"could not be finished: its new files in \.convert-staging/ were gone; the "
                                            r"previous files are back in place; convert or export into it again"):
    _convert(d / "new.safetensors", out)
  assert _visible(out) == old and sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  _convert(d / "new.safetensors", out)
  assert _visible(out) == new
