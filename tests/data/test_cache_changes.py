"""`train.preprocess` re-runs after the clips changed on disk, and the temp files of interrupted writes.

- A clip edited in place is encoded again (its record replaced); a touched but unchanged one is not (sha256).
- A moved clips folder reuses its cache (records take the new paths, nothing is encoded or duplicated); a
  renamed clip is found by its sha256; a new clip at a moved clip's old path gets its own id.
- Folders cached before fingerprints existed still load, are reused in place and after a move, and notice
  later edits.
- Stale temp files of killed writers are removed (`wanjax.fileio.sweep_temps`, `FeatureWriter`); a live
  writer's are kept; a second writer of a feature folder is refused; without flock a writer runs unlocked and
  keeps the temp files that may be live.
"""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.data.helpers import config
from train import clips, features
from train import preprocess as pp
from wanjax import fileio
from wanjax.errors import UsageError

SMALL = dict(frames=5, fps=16.0, sizes=("32*32",), clips_per_shard=2)   # 32×32×5 toy clips
CAPTIONS = ("a small red circle moves left slowly on a gray background",
            "a large blue square moves up quickly on a black background",
            "a small green diamond moves down slowly on a gray background")


def _clip(seed):
  return np.random.default_rng(seed).uniform(-1.0, 1.0, (5, 32, 32, 3)).astype(np.float32)


def _make(folder):
  os.makedirs(folder)
  for i, cap in enumerate(CAPTIONS):
    np.save(os.path.join(folder, f"{i}.npy"), _clip(i))
    with open(os.path.join(folder, f"{i}.txt"), "w") as f:
      f.write(cap)


def _latents(out):
  """{source basename: stored latent} of a feature folder."""
  fs = features.FeatureSet(out)
  return {os.path.basename(c["source"]): fs.tensor(i, "latent") for i, c in enumerate(fs.clips)}


def _counts(s):
  return {k: s[k] for k in ("cached", "already_cached", "moved", "changed", "total_clips")}


def test_edited_clip_is_encoded_again_and_touched_one_is_not(tmp_path):
  src, out = str(tmp_path / "clips"), str(tmp_path / "feat")
  _make(src)
  pp.run(config(**SMALL), src, out)
  before = _latents(out)
  np.save(os.path.join(src, "0.npy"), _clip(10))                 # same shape, same size: new content
  st = os.stat(os.path.join(src, "1.npy"))
  os.utime(os.path.join(src, "1.npy"), ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))   # touched only
  s = pp.run(config(**SMALL), src, out)
  assert _counts(s) == dict(cached=1, already_cached=2, moved=0, changed=1, total_clips=3)
  assert "2 already cached, 1 changed since cached and encoded again" in pp.summary_line(s)
  after = _latents(out)
  assert np.abs(after["0.npy"] - before["0.npy"]).max() > 0.1
  for name in ("1.npy", "2.npy"):
    np.testing.assert_array_equal(after[name], before[name])
  # The re-encoded clip equals a fresh run over the edited file.
  fresh = str(tmp_path / "fresh")
  pp.run(config(**SMALL), src, fresh)
  np.testing.assert_array_equal(after["0.npy"], _latents(fresh)["0.npy"])
  # The touched clip's record took the new mtime (the next run reads nothing); nothing is left to do.
  rec = {os.path.basename(c["source"]): c for c in features.read_index(out)["clips"]}["1.npy"]
  assert rec["fingerprint"]["mtime_ns"] == st.st_mtime_ns + 7_000_000_000
  assert rec["fingerprint"]["sha256"] == clips.file_sha256(os.path.join(src, "1.npy"))
  s = pp.run(config(**SMALL), src, out)
  assert _counts(s) == dict(cached=0, already_cached=3, moved=0, changed=0, total_clips=3)


def test_moved_folder_reuses_its_cache(tmp_path):
  src, out = str(tmp_path / "clips"), str(tmp_path / "feat")
  _make(src)
  pp.run(config(**SMALL), src, out)
  before = _latents(out)
  ids = sorted(c["id"] for c in features.read_index(out)["clips"])
  moved = str(tmp_path / "elsewhere" / "clips2")
  shutil.move(src, moved)
  # A renamed clip (new mtime too): found by its content.
  os.rename(os.path.join(moved, "2.npy"), os.path.join(moved, "two.npy"))
  os.rename(os.path.join(moved, "2.txt"), os.path.join(moved, "two.txt"))
  os.utime(os.path.join(moved, "two.npy"))
  s = pp.run(config(**SMALL), moved, out)
  assert _counts(s) == dict(cached=0, already_cached=3, moved=3, changed=0, total_clips=3)
  assert "3 already cached (3 of them moved)" in pp.summary_line(s)
  index = features.read_index(out)
  assert sorted(c["id"] for c in index["clips"]) == ids
  assert sorted(c["source"] for c in index["clips"]) == [os.path.join(moved, n) for n in ("0.npy", "1.npy",
                                                                                          "two.npy")]
  after = _latents(out)
  for old, new in (("0.npy", "0.npy"), ("1.npy", "1.npy"), ("2.npy", "two.npy")):
    np.testing.assert_array_equal(after[new], before[old])
  # A new clip at a moved clip's old path, with its caption: another clip, with an id of its own.
  os.makedirs(src)
  np.save(os.path.join(src, "0.npy"), _clip(20))
  with open(os.path.join(src, "0.txt"), "w") as f:
    f.write(CAPTIONS[0])
  s = pp.run(config(**SMALL), src, out)
  assert _counts(s) == dict(cached=1, already_cached=0, moved=0, changed=0, total_clips=4)
  assert len({c["id"] for c in features.read_index(out)["clips"]}) == 4
  fs = features.FeatureSet(out)
  new = [i for i, c in enumerate(fs.clips) if c["source"] == os.path.join(src, "0.npy")]
  old = [i for i, c in enumerate(fs.clips) if c["source"] == os.path.join(moved, "0.npy")]
  assert len(new) == len(old) == 1
  assert np.abs(fs.tensor(new[0], "latent") - fs.tensor(old[0], "latent")).max() > 0.1


def test_folder_cached_without_fingerprints_still_loads(tmp_path):
  src, out = str(tmp_path / "clips"), str(tmp_path / "feat")
  _make(src)
  pp.run(config(**SMALL), src, out)
  before = _latents(out)
  path = os.path.join(out, features.INDEX)

  def strip():   # the index as versions before fingerprints wrote it
    index = json.load(open(path))
    for c in index["clips"]:
      del c["fingerprint"]
    features.write_json(path, index)

  strip()
  s = pp.run(config(**SMALL), src, out)
  assert _counts(s) == dict(cached=0, already_cached=3, moved=0, changed=0, total_clips=3)
  fp = {os.path.basename(c["source"]): c["fingerprint"] for c in features.read_index(out)["clips"]}
  assert fp["0.npy"] == {"size": os.stat(os.path.join(src, "0.npy")).st_size,
                         "mtime_ns": os.stat(os.path.join(src, "0.npy")).st_mtime_ns,
                         "sha256": fileio.file_sha256(os.path.join(src, "0.npy"))}   # fingerprinted now
  # So a later touch of the unchanged clip is told apart from an edit, as for a new folder.
  os.utime(os.path.join(src, "0.npy"), ns=(1, os.stat(os.path.join(src, "0.npy")).st_mtime_ns + 10**9))
  s = pp.run(config(**SMALL), src, out)
  assert _counts(s) == dict(cached=0, already_cached=3, moved=0, changed=0, total_clips=3)
  # Moved: reused at the same place in the folder (trusted: there is nothing to compare with).
  strip()
  moved = str(tmp_path / "clips2")
  shutil.move(src, moved)
  s = pp.run(config(**SMALL), moved, out)
  assert _counts(s) == dict(cached=0, already_cached=3, moved=3, changed=0, total_clips=3)
  # Edited after the fingerprint was recorded: noticed.
  np.save(os.path.join(moved, "2.npy"), _clip(30))
  s = pp.run(config(**SMALL), moved, out)
  assert _counts(s) == dict(cached=1, already_cached=2, moved=0, changed=1, total_clips=3)
  after = _latents(out)
  np.testing.assert_array_equal(after["0.npy"], before["0.npy"])
  assert np.abs(after["2.npy"] - before["2.npy"]).max() > 0.1


def test_clip_changed_while_read_is_skipped(tmp_path, monkeypatch):
  np.save(tmp_path / "a.npy", _clip(0))
  read = dict(num_frames=5, fps=16.0, sizes=[(32, 32)], max_aspect_change=0.25)
  frames, _, info = clips.read_clip(str(tmp_path / "a.npy"), **read)
  assert info["fingerprint"] == clips.fingerprint(str(tmp_path / "a.npy"))
  original = clips.read_npy_clip

  def read_while_written(path, **kw):
    out = original(path, **kw)
    np.save(path, _clip(1))            # a writer replaces the file meanwhile
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1_000_000_000))
    return out

  monkeypatch.setattr(clips, "read_npy_clip", read_while_written)
  with pytest.raises(clips.Skip, match=r"^changed while it was read \(being written\?\); run again"):
    clips.read_clip(str(tmp_path / "a.npy"), **read)


def _dead_pid():
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_sweep_removes_only_stale_temp_files(tmp_path):
  host = fileio.host_tag()
  names = {
      f".index.json.{_dead_pid()}@{host}.abcd1234.tmp.json": True,          # its writer was killed
      f".index.json.{os.getpid()}@{host}.abcd1235.tmp.json": False,         # this process: live
      f".index.json.{os.getppid()}@{host}.abcd1236.tmp.json": False,        # a live process
      f".index.json.{_dead_pid()}@other-host.abcd1237.tmp.json": False,     # another host: by age only
      ".tmp-k2j4h5g6.safetensors": False,                                   # no pid, recent
      ".shard-00001.safetensors.zz9yy8xx.tmp.safetensors": False,           # no pid, recent
      "shard-00000.safetensors": False,                                     # data
      ".keep": False,
  }
  for n in names:
    (tmp_path / n).write_bytes(b"x")
  old = {".tmp-a1b2c3d4.safetensors": True, ".keep.json": False,
         f".x.{os.getppid()}@{host}.abcd1238.tmp": True}                     # unwritten for 2 days
  for n in old:
    (tmp_path / n).write_bytes(b"x")
    os.utime(tmp_path / n, (os.stat(tmp_path / n).st_atime, os.stat(tmp_path / n).st_mtime - 2 * 86400))
  (tmp_path / ".tmp-dirdirdi.safetensors").mkdir()                          # never a directory
  want = sorted(n for n, stale in {**names, **old}.items() if stale)
  assert fileio.sweep_temps(str(tmp_path)) == want
  assert sorted(os.listdir(tmp_path)) == sorted((set(names) | set(old) | {".tmp-dirdirdi.safetensors"}) - set(want))
  # With the folder's lock held every temp file of ours goes, and nothing else.
  assert fileio.sweep_temps(str(tmp_path), everything=True) == sorted(
      n for n in names if n.startswith(".") and n != ".keep" and n not in want)
  assert sorted(os.listdir(tmp_path)) == [".keep", ".keep.json", ".tmp-dirdirdi.safetensors",
                                          "shard-00000.safetensors"]


def test_atomic_open_names_its_temp_file_and_sweeps_the_folder(tmp_path):
  dead = tmp_path / f".a.txt.{_dead_pid()}@{fileio.host_tag()}.q1w2e3r4.tmp.txt"
  dead.write_text("half")
  seen = []
  with fileio.atomic_open(str(tmp_path / "a.txt")) as f:
    seen += [n for n in os.listdir(tmp_path) if n.startswith(".")]
    f.write("done")
  assert not dead.exists() and (tmp_path / "a.txt").read_text() == "done"
  assert len(seen) == 1 and fileio.is_temp(seen[0]) and f".{os.getpid()}@{fileio.host_tag()}." in seen[0]
  assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_feature_writer_locks_its_folder_and_clears_interrupted_writes(tmp_path):
  out = tmp_path / "feat"
  out.mkdir()
  for n in (".tmp-k2j4h5g6.safetensors", ".index.json.zz9yy8xx.tmp.json", ".notes"):
    (out / n).write_bytes(b"x")
  w = features.FeatureWriter(str(out), {"a": 1}, clips_per_shard=1)
  assert sorted(os.listdir(out)) == [".lock", ".notes"]
  with pytest.raises(UsageError, match=r"feat is being written by another train\.preprocess run \(it holds "
                                       r".*feat/\.lock\); wait for it to finish or use another --output folder"):
    features.FeatureWriter(str(out), {"a": 1})
  w.add({"id": "c0", "source": "s", "caption": "c"}, {"latent": np.zeros((1, 2, 2, 4), np.float32)})
  w.close()
  w2 = features.FeatureWriter(str(out), {"a": 1})
  assert w2.done == {"c0"}
  w2.close()
  with pytest.raises(UsageError, match="different settings"):
    features.FeatureWriter(str(out), {"a": 2})
  features.FeatureWriter(str(out), {"a": 1}).close()    # the refused writer released the lock


def test_feature_writer_without_flock_runs_unlocked(tmp_path, monkeypatch):
  def no_locks(path):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fileio, "try_lock", no_locks)
  out = tmp_path / "feat"
  out.mkdir()
  (out / ".tmp-k2j4h5g6.safetensors").write_bytes(b"x")      # recent, pid-less: maybe a live writer's
  w = features.FeatureWriter(str(out), {"a": 1}, clips_per_shard=1)
  w.add({"id": "c0", "source": "s", "caption": "c"}, {"latent": np.zeros((1, 2, 2, 4), np.float32)})
  w.close()
  assert sorted(os.listdir(out)) == [".tmp-k2j4h5g6.safetensors", "index.json", "shard-00000.safetensors",
                                     "skipped.json"]


def test_streaming_writer_and_video_temp_files_use_the_swept_naming(tmp_path):
  """The safetensors streamer and the mp4 writer name their temp files like atomic_open (pid + host), and
  clear a killed writer's leftovers from the folder they write into."""
  from wanjax import checkpoint, video
  host = fileio.host_tag()
  dead = [tmp_path / f".m.safetensors.{_dead_pid()}@{host}.a1b2c3d4.tmp.safetensors", tmp_path / ".tmp-a1b2c3d4.safetensors"]
  for d in dead:
    d.write_bytes(b"half")
  old = os.stat(dead[1]).st_mtime - 2 * 86400
  os.utime(dead[1], (old, old))
  w = checkpoint.StreamingWriter(str(tmp_path / "m.safetensors"), [("a", np.float32, (2,))])
  live = [n for n in os.listdir(tmp_path) if n.startswith(".")]
  assert len(live) == 1 and fileio.is_temp(live[0]) and f".{os.getpid()}@{host}." in live[0]
  w.write("a", np.ones(2, np.float32))
  w.close()
  assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]
  vdir = tmp_path / "v"
  vdir.mkdir()
  (vdir / f".x.mp4.{_dead_pid()}@{host}.q1w2e3r4.tmp.mp4").write_bytes(b"half")
  tmp = video._temp_path(str(vdir / "x.mp4"))
  assert os.path.basename(tmp).startswith(f".x.mp4.{os.getpid()}@{host}.") and fileio.is_temp(os.path.basename(tmp))
  assert sorted(os.listdir(vdir)) == [os.path.basename(tmp)]


def test_host_tag_names_the_pid_namespace():
  """Containers that share a hostname and a folder have separate pid spaces: the tag tells them apart, so one
  never takes another's live writer for dead."""
  ns = os.stat("/proc/self/ns/pid").st_ino
  tag = fileio.host_tag()
  assert tag.endswith(f"-ns{ns}") and fileio._PID_TEMP.match(f".a.json.12@{tag}.abcd1234.tmp.json")
