"""Data preparation as a user meets it: bad inputs, re-runs into existing folders, and clear one-line errors.

- `train.preprocess`: float `.npy` clips outside [−1, 1] or with NaN, non-`.npy` files and missing files are
  skipped with their reason; hidden temp files (a killed writer's) are not inputs; a re-run redoes the skip
  records of its own clips and refuses a folder that cached the same video under another caption; missing model
  paths name their config key before anything is written; the CLI fails when no clip could be cached.
- `wanjax.toyworld.dataset`: a re-run refuses a folder holding clips it would not rewrite.
- `train/data.py`: a corrupt `.npy` shard, a missing latents folder or text-encoder path raise `UsageError`.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.data.helpers import config
from train import data, features
from train import clips
from train import preprocess as pp
from wanjax.errors import UsageError
from wanjax.toyworld.dataset import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(frames=5, fps=16.0, sizes=("32*32",), clips_per_shard=2)   # 32×32×5 toy clips
READ = dict(num_frames=5, fps=16.0, sizes=[(32, 32)], max_aspect_change=0.25)


def _clip(seed, lo=-1.0, hi=1.0, shape=(5, 32, 32, 3)):
  return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def _skipped(out):
  return {os.path.basename(s["source"]): s["reason"] for s in json.load(open(os.path.join(out, "skipped.json")))}


def test_bad_npy_clips_and_missing_files_are_skipped_with_their_reason(tmp_path):
  np.save(tmp_path / "u255.npy", _clip(0, 0.0, 255.0))            # float frames in 0..255: not [−1, 1]
  nan = _clip(1)
  nan[2, 3, 4, 1] = np.nan
  np.save(tmp_path / "nan.npy", nan)
  (tmp_path / "text.npy").write_text("not an array\n")
  np.save(tmp_path / "ok.npy", _clip(2, -1.0005, 1.0005))         # rounding overshoot is accepted
  with pytest.raises(clips.Skip, match=r"out of range: float \.npy values span \[0\.0\d*, 254\.9\d*\]"):
    clips.read_clip(str(tmp_path / "u255.npy"), **READ)
  with pytest.raises(clips.Skip, match="NaN or infinite"):
    clips.read_clip(str(tmp_path / "nan.npy"), **READ)
  with pytest.raises(clips.Skip, match="not a NumPy .npy file"):
    clips.read_clip(str(tmp_path / "text.npy"), **READ)
  for name in ("gone.npy", "gone.mp4"):
    with pytest.raises(clips.Skip, match="^missing: no file"):
      clips.read_clip(str(tmp_path / name), **READ)
  frames, bucket, _ = clips.read_clip(str(tmp_path / "ok.npy"), **READ)
  ref = np.round((np.clip(_clip(2, -1.0005, 1.0005), -1, 1) + 1) * 127.5).astype(np.uint8)
  assert bucket == (32, 32) and np.array_equal(frames, ref)


def test_hidden_files_are_not_inputs(tmp_path):
  np.save(tmp_path / "a.npy", _clip(0))
  (tmp_path / "a.txt").write_text("a red circle")
  np.save(tmp_path / ".a.npy.k3j9.tmp.npy", _clip(1))              # temp file of a killed atomic write
  (tmp_path / ".cache").mkdir()
  np.save(tmp_path / ".cache" / "b.npy", _clip(2))
  (tmp_path / ".cache" / "b.txt").write_text("a blue square")
  items, skips = clips.list_inputs(str(tmp_path))
  assert [os.path.basename(it.source) for it in items] == ["a.npy"] and skips == []


def test_rerun_redoes_skips_and_refuses_changed_captions(tmp_path):
  clips = tmp_path / "clips"
  clips.mkdir()
  for i in range(3):
    np.save(clips / f"{i}.npy", _clip(10 + i))
  (clips / "0.txt").write_text("a small red circle moves left slowly on a gray background")
  (clips / "1.txt").write_text("a large blue square moves up quickly on a black background")
  out = str(tmp_path / "feat")
  s = pp.run(config(**SMALL), str(clips), out)
  assert (s["cached"], s["skipped"]) == (2, 1) and _skipped(out) == {
      "2.npy": "no caption (expected a non-empty sidecar 2.txt)"}
  # The caption is added: the clip is cached and no longer listed as skipped.
  (clips / "2.txt").write_text("a small green diamond moves down slowly on a gray background")
  s = pp.run(config(**SMALL), str(clips), out)
  assert (s["cached"], s["already_cached"], s["skipped"]) == (1, 2, 0) and _skipped(out) == {}
  assert "0 skipped" in pp.summary_line(s)
  # A caption edited (or the folder regenerated): the folder would hold the clip twice; it is refused.
  before = open(os.path.join(out, features.INDEX)).read()
  (clips / "1.txt").write_text("a large white triangle moves right quickly on a brown background")
  with pytest.raises(UsageError, match=r"1 clip\(s\) of --input are cached .* with another caption, e\.g\. "
                                       r".*1\.npy: 'a large blue square"):
    pp.run(config(**SMALL), str(clips), out)
  assert open(os.path.join(out, features.INDEX)).read() == before
  # Several captions of one video from one index stay valid on a re-run.
  rows = [{"video": "clips/0.npy", "caption": c} for c in ("a small red circle moves left slowly on a gray "
                                                             "background", "a red circle")]
  (tmp_path / "two.json").write_text(json.dumps(rows))
  out2 = str(tmp_path / "feat2")
  assert pp.run(config(**SMALL), str(tmp_path / "two.json"), out2)["cached"] == 2
  assert pp.run(config(**SMALL), str(tmp_path / "two.json"), out2)["already_cached"] == 2


def test_missing_model_paths_name_their_key_before_writing(tmp_path):
  np.save(tmp_path / "a.npy", _clip(0))
  (tmp_path / "a.txt").write_text("a red circle")
  models = os.path.join(ROOT, "wanjax", "toyworld", "checkpoints")
  good = dict(random_encoders=False, vae=os.path.join(models, "vae"), text_encoder=os.path.join(models, "umt5"),
              tokenizer=os.path.join(models, "tokenizer"))
  out = tmp_path / "feat"
  for key in ("vae", "text_encoder", "tokenizer"):
    c = config(**SMALL, **dict(good, **{key: str(tmp_path / "nope")}))
    with pytest.raises(UsageError, match=f"^config.{key}='.*nope' does not exist$"):
      pp.run(c, str(tmp_path), str(out))
    assert not out.exists()


def test_cli_fails_when_no_clip_is_cached(tmp_path):
  np.save(tmp_path / "a.npy", _clip(0, shape=(3, 32, 32, 3)))      # 3 frames < 5
  (tmp_path / "a.txt").write_text("a red circle")
  out = tmp_path / "feat"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "train.preprocess", "--config", "configs/data/toyworld.py",
                      "--input", str(tmp_path), "--output", str(out), "--config.frames=5", "--config.fps=16",
                      "--config.sizes=('32*32',)"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1 and "cached 0 clips" in r.stdout, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1] == f"error: no clip could be cached in {out}; the reasons are in " \
                                              f"skipped.json"
  assert _skipped(str(out)) == {"a.npy": "too short: 3 frames in the .npy clip; 5 are needed"}


def test_dataset_rerun_refuses_clips_it_would_not_rewrite(tmp_path):
  d = tmp_path / "toy"
  first = write_dataset(d, 3, seed=1, frames=5, size=32, fmt="npy")
  again = write_dataset(d, 3, seed=1, frames=5, size=32, fmt="npy")        # the same run again: fine
  assert again == first and len(os.listdir(d)) == 3 * 2 + 2
  with pytest.raises(UsageError, match=r"already holds 1 clip\(s\) that a run with n=2, format=npy would not "
                                       r"rewrite \(000002\.npy\)"):
    write_dataset(d, 2, seed=1, frames=5, size=32, fmt="npy")
  with pytest.raises(UsageError, match=r"already holds 3 clip\(s\) .*format=mp4.*\(000000\.npy, 000001\.npy, "
                                       r"000002\.npy\)"):
    write_dataset(d, 3, seed=1, frames=5, size=32, fmt="mp4")
  assert len(write_dataset(d, 4, seed=1, frames=5, size=32, fmt="npy")) == 4   # growing it is fine
  with pytest.raises(UsageError, match="^size=40 must be a multiple of 16"):
    write_dataset(tmp_path / "other", 1, frames=5, size=40)


def test_latent_shards_and_prompt_encoder_errors(tmp_path):
  with pytest.raises(UsageError, match="is not a folder"):
    data.LatentShards(str(tmp_path / "missing"))
  (tmp_path / "s").mkdir()
  np.save(tmp_path / "s" / "a.npy", np.zeros((2, 3), np.float32))
  (tmp_path / "s" / "b.npy").write_bytes(b"\x93NUMPY" + b"\x01")            # truncated header
  with pytest.raises(UsageError, match=r"b\.npy: unreadable \.npy shard"):
    data.LatentShards(str(tmp_path / "s"))
  tok = os.path.join(ROOT, "wanjax", "toyworld", "checkpoints", "tokenizer")
  with pytest.raises(UsageError, match=r"^config.data.text_encoder='.*nope' does not exist$"):
    data.prompt_encoder(str(tmp_path / "nope"), tok, text_len=8)
