"""Inputs and folders as a careless or unlucky user hands them to `train.preprocess` / `train.features`.

- Text files: a UTF-8 byte-order mark (Excel, Windows editors) is dropped from captions, CSV headers and prompt
  files; a caption that is not UTF-8 skips its clip with the reason; a CSV/JSON index that is not UTF-8 or not
  valid JSON is one error naming the file and line; a single clip as --input says what to give instead.
- --output: a file, or a folder of other files without an index, is refused before anything is written.
- A shard deleted from a feature folder: readers say so up front, a re-run encodes its clips again.
- Ctrl-C: the clips encoded so far are written before the run stops.
"""

import json
import os

import numpy as np
import pytest

from tests.data.helpers import config
from train import clips, data, features
from train import preprocess as pp
from wanjax.errors import UsageError

SMALL = dict(frames=5, fps=16.0, sizes=("32*32",), clips_per_shard=2)   # 32×32×5 toy clips
BOM = b"\xef\xbb\xbf"


def _clip(seed):
  return np.random.default_rng(seed).uniform(-1.0, 1.0, (5, 32, 32, 3)).astype(np.float32)


def _clips(folder, n):
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    np.save(os.path.join(folder, f"{i}.npy"), _clip(i))
    with open(os.path.join(folder, f"{i}.txt"), "w") as f:
      f.write(f"a small red circle moves left slowly number {i}")


def test_text_encodings_and_bad_indexes(tmp_path):
  np.save(tmp_path / "a.npy", _clip(0))
  (tmp_path / "a.txt").write_bytes(BOM + b"a red circle\r\n")
  np.save(tmp_path / "b.npy", _clip(1))
  (tmp_path / "b.txt").write_bytes(b"caf\xe9 au lait")                     # Latin-1
  items, skips = clips.list_inputs(str(tmp_path))
  assert [(os.path.basename(it.source), it.caption) for it in items] == [("a.npy", "a red circle")]
  assert skips == [(str(tmp_path / "b.npy"), f"unreadable caption: {tmp_path / 'b.txt'}: not UTF-8 text (byte "
                                             f"0xe9 at offset 3); save it as UTF-8")]
  idx = tmp_path / "idx"
  idx.mkdir()
  (idx / "bom.csv").write_bytes(BOM + b'video,caption\r\n../a.npy,"a red\r\ncircle"\r\n../b.npy,x\r\n')
  items, _ = clips.list_inputs(str(idx / "bom.csv"))
  assert [(it.source, it.caption, it.origin) for it in items] == [
      (str(tmp_path / "a.npy"), "a red\r\ncircle", f"{idx / 'bom.csv'}:3"),
      (str(tmp_path / "b.npy"), "x", f"{idx / 'bom.csv'}:4")]
  (idx / "p.txt").write_bytes(BOM + b"first prompt\n\nsecond \xe2\x80\xa8 prompt\n")
  assert [it.caption for it in clips.list_inputs(str(idx / "p.txt"))[0]] == ["first prompt",
                                                                               "second \u2028 prompt"]
  assert data.read_prompts(str(idx / "p.txt")) == ["first prompt", "second \u2028 prompt"]
  bad = {"latin.csv": (b"video,caption\na.npy,caf\xe9\n", r"latin\.csv: not UTF-8 text \(byte 0xe9 at offset 23\)"),
         "comma.json": (b'[{"video": "a.npy", "caption": "x"},]',
                        r"comma\.json:1: not valid JSON \(Expecting value, column 37\)$"),
         "line.jsonl": (b'{"video": "a.npy", "caption": "x"}\n\n{oops\n', r"line\.jsonl:3: not valid JSON"),
         "str.json": (b'"a.npy"', r"str\.json: expected a list of objects with video and caption keys, or one "
                                  r"\{video: caption\} object; got str$")}
  for name, (raw, msg) in bad.items():
    (idx / name).write_bytes(raw)
    with pytest.raises(UsageError, match=msg):
      clips.list_inputs(str(idx / name))
  with pytest.raises(UsageError, match=r"a\.npy is a single clip; give the folder holding it \(its caption in "
                                       r"a\.txt beside it\) or a \.csv/\.json index$"):
    clips.list_inputs(str(tmp_path / "a.npy"))


def test_output_that_is_not_a_feature_folder_is_refused(tmp_path):
  _clips(tmp_path / "clips", 1)
  (tmp_path / "file").write_text("x")
  with pytest.raises(UsageError, match=r"^--output .*file is a file; give a folder"):
    pp.run(config(**SMALL), str(tmp_path / "clips"), str(tmp_path / "file"))
  before = sorted(os.listdir(tmp_path / "clips"))
  with pytest.raises(UsageError, match=r"^--output .*clips holds other files \(0\.npy, 0\.txt\) and no index\.json: "
                                       r"not a feature folder; give a new or empty folder$"):
    pp.run(config(**SMALL), str(tmp_path / "clips"), str(tmp_path / "clips"))
  assert sorted(os.listdir(tmp_path / "clips")) == before
  (tmp_path / "empty").mkdir()
  assert pp.run(config(**SMALL), str(tmp_path / "clips"), str(tmp_path / "empty"))["cached"] == 1


def test_lost_shard_is_named_and_encoded_again(tmp_path):
  _clips(tmp_path / "clips", 3)
  out = str(tmp_path / "feat")
  pp.run(config(**SMALL), str(tmp_path / "clips"), out)
  full = features.FeatureSet(out)
  ref = {c["source"]: full.tensor(i, "latent") for i, c in enumerate(full.clips)}
  os.remove(os.path.join(out, "shard-00001.safetensors"))                 # holds the third clip
  with pytest.raises(UsageError, match=r"feat: 1 shard\(s\) named by index\.json are missing "
                                       r"\(shard-00001\.safetensors\); run train\.preprocess again"):
    features.FeatureSet(out)
  s = pp.run(config(**SMALL), str(tmp_path / "clips"), out)
  assert (s["cached"], s["already_cached"], s["total_clips"]) == (1, 2, 3)
  fs = features.FeatureSet(out)
  assert sorted(c["shard"] for c in fs.clips) == ["shard-00000.safetensors"] * 2 + ["shard-00002.safetensors"]
  for i, c in enumerate(fs.clips):
    np.testing.assert_array_equal(fs.tensor(i, "latent"), ref[c["source"]])


def test_ctrl_c_keeps_the_clips_encoded_so_far(tmp_path, monkeypatch):
  _clips(tmp_path / "clips", 5)
  out = str(tmp_path / "feat")
  calls, encode = [], pp.encode_videos

  def encode_then_ctrl_c(*a, **kw):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return encode(*a, **kw)

  monkeypatch.setattr(pp, "encode_videos", encode_then_ctrl_c)
  with pytest.raises(KeyboardInterrupt):
    pp.run(config(**dict(SMALL, clips_per_shard=8)), str(tmp_path / "clips"), out)   # batches of 2: 4 clips done
  index = features.read_index(out)
  assert len(index["clips"]) == 4 and index["shards"] == ["shard-00000.safetensors"]
  monkeypatch.setattr(pp, "encode_videos", encode)
  s = pp.run(config(**dict(SMALL, clips_per_shard=8)), str(tmp_path / "clips"), out)
  assert (s["cached"], s["already_cached"], s["total_clips"]) == (1, 4, 5)
  assert json.load(open(os.path.join(out, "skipped.json"))) == []


def test_npy_clips_are_opened_one_thread_at_a_time(tmp_path, monkeypatch):
  """Reader threads never parse .npy headers at once (CPython 3.11's ast is not safe for that: a clip was once
  skipped as "unreadable .npy: AST constructor recursion depth mismatch")."""
  import threading
  import time
  from concurrent.futures import ThreadPoolExecutor
  from train import clips as clipsmod
  paths = []
  for i in range(4):
    paths.append(str(tmp_path / f"{i}.npy"))
    np.save(paths[-1], np.zeros((5, 16, 16, 3), np.uint8))
  real, inside, most = np.load, [0], [0]
  guard = threading.Lock()

  def slow_load(*a, **kw):
    with guard:
      inside[0] += 1
      most[0] = max(most[0], inside[0])
    time.sleep(0.05)
    try:
      return real(*a, **kw)
    finally:
      with guard:
        inside[0] -= 1

  monkeypatch.setattr(np, "load", slow_load)
  with ThreadPoolExecutor(4) as pool:
    out = list(pool.map(lambda p: clipsmod.read_npy_clip(p, num_frames=5, sizes=[(16, 16)], max_aspect_change=0.1),
                        paths))
  assert len(out) == 4 and most[0] == 1
