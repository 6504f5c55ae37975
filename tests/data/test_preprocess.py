"""`python -m train.preprocess` on generated toy-world clips, T2V (tiny random encoders, no torch).

- Resize/crop/frame sampling equal independent references (PIL box resize, exact rational timestamps).
- Shapes, dtypes and the index/skip records of a run over a folder with good, wide (cropped), too-wide, too-short,
  corrupt and caption-less clips.
- Round trip: the stored latent is the VAE encoding of the clip as the reference prepares it (tests/data/helpers.py),
  and decode(stored) equals decode(reference latent).
- Resume after a (simulated) crash re-encodes only what was lost and rewrites no finished shard; a folder refuses
  a run with other settings; `train/data.py: LatentShards` reads the folder lazily.
"""

import json
import os

import numpy as np
import pytest

from tests.conftest import max_rel_err
from tests.data.helpers import (DECODE_TOL, LATENT_TOL, N_TOY, RESIZE_TOL, batch_sharded, config, make_dataset,
                                ref_indices, ref_resize, ref_video)
from train import data, features
from train import clips
from train import preprocess as pp
from wanjax import checkpoint
from wanjax import sharding as shd
from wanjax.errors import UsageError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return make_dataset(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("feat") / "t2v")
  c = config()
  return c, out, pp.run(c, dataset["root"], out)


@pytest.fixture(scope="module")
def encoders(full_run):
  c, out, _ = full_run
  mesh = shd.make_mesh(c.mesh)
  return pp.build_encoders(c, mesh, tokenizer=os.path.join(out, "toy_tokenizer", "tokenizer.json")), mesh


def test_geometry_matches_references():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (2, 40, 70, 3), dtype=np.uint8)
  for h, w in ((32, 48), (16, 64), (48, 48), (64, 96)):   # crop width / height, shrink and enlarge
    got = np.asarray(clips.resize_clip(x, h, w))
    assert got.shape == (2, h, w, 3)
    assert np.abs(got - ref_resize(x, h, w)).max() <= RESIZE_TOL, (h, w)
  for src in (16.0, 8.0, 24.0, 30.0, 29.97, 60.0):
    assert clips.frame_indices(81, 16.0, src).tolist() == ref_indices(81, 16.0, src), src


def test_shapes_dtypes_index_and_skips(full_run, dataset):
  c, out, s = full_run
  assert (s["cached"], s["skipped"], s["already_cached"]) == (N_TOY + 1, 4, 0)
  assert s["skip_reasons"] == {"no caption": 1, "too short": 1, "unreadable": 1, "wrong aspect": 1}
  assert "4 skipped" in pp.summary_line(s)
  skipped = {os.path.basename(r["source"]): r["reason"] for r in json.load(open(os.path.join(out, "skipped.json")))}
  assert sorted(skipped) == ["corrupt.mp4", "nocaption.mp4", "pano.mp4", "short.mp4"]
  assert skipped["short.mp4"].startswith("too short: 3 frames")
  index = features.read_index(out)
  assert len(index["shards"]) == 2 and len(index["clips"]) == N_TOY + 1
  from wanjax.text.tokenize import Tokenizer
  tokenizer = Tokenizer(os.path.join(out, "toy_tokenizer", "tokenizer.json"), max_length=c.text_len)
  fs = features.FeatureSet(out)
  by_src = {os.path.basename(cl["source"]): i for i, cl in enumerate(fs.clips)}
  for name, i in by_src.items():
    rec = fs.clips[i]
    lat_hw = (4, 6) if name == "wide.mp4" else (4, 4)
    assert fs.view(i, "latent").shape == (3,) + lat_hw + (16,)    # 9 frames -> 3 latent frames, /8, z 16
    assert fs.view(i, "latent").dtype == np.float32
    n_tokens = int(tokenizer([rec["caption"]])[1].sum())
    assert fs.view(i, "context").shape == (n_tokens, 24)            # trimmed to the real tokens incl. </s>
    assert fs.tensor(i, "context").shape == (c.text_len, 24)
    assert np.all(fs.tensor(i, "context")[n_tokens:] == 0)
    assert rec["bucket"] == ("48*32" if name == "wide.mp4" else "32*32")
    assert rec["frames"] == 9 and rec["source_fps"] == 16.0
  assert sorted(len(v) for v in fs.buckets().values()) == [1, N_TOY]
  assert fs.uncond("empty").shape == (c.text_len, 24) and fs.index["uncond"]["lengths"]["empty"] == 1


def test_round_trip_equals_direct_encode(full_run, dataset, encoders):
  from wanjax.vae import decode_latent, encode_video
  c, out, _ = full_run
  enc, mesh = encoders
  fs = features.FeatureSet(out)
  by_src = {cl["source"]: i for i, cl in enumerate(fs.clips)}
  # Two toy clips (32*32 bucket) and the cropped wide clip (48*32), each as a batch of 2 like the pipeline's.
  for paths, (h, w) in (((dataset["toy"][1], dataset["toy"][3]), (32, 32)), ((dataset["wide"],) * 2, (32, 48))):
    video = np.stack([ref_video(p, c, h, w) for p in paths])
    stored = np.stack([fs.tensor(by_src[p], "latent") for p in paths])
    with shd.activate(mesh):   # the pipeline's mesh context: its compiled encoder is reused
      ref = np.asarray(encode_video(enc.vae, batch_sharded(video, mesh)))
      assert max_rel_err(stored, ref) <= LATENT_TOL
      if h == w:   # one decode batch: [stored, reference]
        dec = np.asarray(decode_latent(enc.vae, batch_sharded(np.stack([stored[0], ref[0]]), mesh)))
        assert dec.shape == video.shape
        assert max_rel_err(dec[0], dec[1]) <= DECODE_TOL


def test_resume_after_interruption_writes_nothing_twice(full_run, dataset, tmp_path):
  _, full_out, _ = full_run
  index_path = tmp_path / "clips.json"   # a JSON index of the toy clips (also covers that input kind)
  rows = [{"video": os.path.relpath(p, tmp_path), "caption": open(p[:-4] + ".txt").read()} for p in dataset["toy"]]
  index_path.write_text(json.dumps(rows))
  out = str(tmp_path / "feat")
  with pytest.raises(pp.Interrupted):
    pp.run(config(clips_per_shard=2, debug_stop_after_shards=1), str(index_path), out)
  first = features.read_index(out)
  assert first["shards"] == ["shard-00000.safetensors"] and len(first["clips"]) == 2
  shard0 = os.path.join(out, "shard-00000.safetensors")
  st0 = os.stat(shard0)
  s = pp.run(config(clips_per_shard=2), str(index_path), out)
  assert (s["already_cached"], s["cached"], s["shards_written"]) == (2, N_TOY - 2, 2)
  assert os.stat(shard0).st_mtime_ns == st0.st_mtime_ns and os.stat(shard0).st_ino == st0.st_ino
  index = features.read_index(out)
  ids = [cl["id"] for cl in index["clips"]]
  assert len(ids) == len(set(ids)) == N_TOY
  for shard in index["shards"]:   # every tensor in a shard belongs to a clip the index places there, once
    keys = checkpoint.SafetensorsReader([os.path.join(out, shard)]).keys()
    assert sorted(keys) == sorted(f"{cl['id']}.{k}" for cl in index["clips"] if cl["shard"] == shard
                                  for k in cl["keys"])
  # Nothing left to do: no shard written, the index unchanged.
  again = pp.run(config(clips_per_shard=2), str(index_path), out)
  assert (again["cached"], again["shards_written"]) == (0, 0)
  assert features.read_index(out)["clips"] == index["clips"]
  # Same clips (same ids) as the one-pass run over the folder, same values.
  full = features.FeatureSet(full_out)
  full_by_id = {cl["id"]: i for i, cl in enumerate(full.clips)}
  fs = features.FeatureSet(out)
  for i, cl in enumerate(fs.clips):
    j = full_by_id[cl["id"]]
    for name in ("latent", "context"):
      assert max_rel_err(fs.tensor(i, name), full.tensor(j, name)) <= 1e-6
  # The trainers' loader reads the folder lazily, one clip per "shard".
  lat = data.LatentShards(out)
  ctx = data.LatentShards(out, key="context", rank=1, num_ranks=2)
  assert len(lat) == N_TOY and lat.sample_shape == (3, 4, 4, 16) and len(ctx) == 2
  np.testing.assert_array_equal(lat.get([4, 0]), np.stack([fs.tensor(4, "latent"), fs.tensor(0, "latent")]))
  np.testing.assert_array_equal(ctx.get([1]), fs.tensor(3, "context")[None])
  assert data.read_prompts(out) == fs.captions()   # prompts pair with LatentShards(out) by index
  with pytest.raises(UsageError, match="frames"):
    pp.run(config(clips_per_shard=2, frames=5), str(index_path), out)


def test_input_errors(tmp_path):
  with pytest.raises(UsageError, match="does not exist"):
    clips.list_inputs(str(tmp_path / "missing"))
  (tmp_path / "x.parquet").write_text("")
  with pytest.raises(UsageError, match="unknown index type"):
    clips.list_inputs(str(tmp_path / "x.parquet"))
  (tmp_path / "i.csv").write_text("clip,caption\na.mp4,hello\n")
  with pytest.raises(UsageError, match="no video column"):
    clips.list_inputs(str(tmp_path / "i.csv"))
  with pytest.raises(UsageError, match="multiples of 16"):
    clips.parse_size("830*480")


def test_npy_clips_are_read_losslessly_without_ffmpeg(tmp_path):
  # Float clips in [-1, 1] (wanjax.toyworld.dataset --format npy) and uint8 clips; the first num_frames are used.
  rng = np.random.default_rng(0)
  u8 = rng.integers(0, 256, (7, 16, 32, 3), dtype=np.uint8)
  np.save(tmp_path / "a.npy", u8.astype(np.float32) / 127.5 - 1.0)
  np.save(tmp_path / "b.npy", u8)
  (tmp_path / "a.txt").write_text("a red circle")
  (tmp_path / "b.txt").write_text("a blue square")
  items, skips = clips.list_inputs(str(tmp_path))
  assert [os.path.basename(it.source) for it in items] == ["a.npy", "b.npy"] and not skips
  for it in items:
    frames, bucket, info = clips.read_clip(it.source, num_frames=5, fps=16, sizes=[(32, 32), (16, 32)],
                                        max_aspect_change=0.1)
    assert frames.dtype == np.uint8 and bucket == (16, 32) and info["source_size"] == [32, 16]
    np.testing.assert_array_equal(frames, u8[:5])
  with pytest.raises(clips.Skip, match="too short: 7 frames"):
    clips.read_clip(str(tmp_path / "b.npy"), num_frames=9, fps=16, sizes=[(16, 32)], max_aspect_change=0.1)
  np.save(tmp_path / "c.npy", u8[..., 0])
  with pytest.raises(clips.Skip, match=r"shape \(7, 16, 32\)"):
    clips.read_clip(str(tmp_path / "c.npy"), num_frames=5, fps=16, sizes=[(16, 32)], max_aspect_change=0.1)
