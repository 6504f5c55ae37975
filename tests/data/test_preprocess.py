"""`python -m train.preprocess` on generated toy-world clips (tiny random encoders, no torch).

- Shapes, dtypes and the index/skip records of a run over a folder with good, wide (cropped), too-wide, too-short,
  corrupt and caption-less clips.
- Round trip: the stored latent is the VAE encoding of the clip as an independent reference prepares it (mp4
  decoded by `wanjax.video.read_video`, frames picked by exact rational timestamps, centre crop computed here,
  resized by PIL's antialiased bicubic), and decode(stored) equals decode(reference latent).
- Resume after a (simulated) crash re-encodes only what was lost and rewrites no finished shard; a folder refuses
  a run with other settings.
- I2V: `y` = [first-frame mask | VAE latent of (frame 0, zeros…)], `clip_fea` = CLIP of frame 0; bf16 storage.
- Prompt-only input through the CLI; `train/data.py: LatentShards` and `FeatureSet` read the folder lazily.
"""

import csv
import fractions
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from configs.data import toyworld
from tests.conftest import max_rel_err
from train import data, features
from train import preprocess as pp
from wanjax import sharding as shd
from wanjax.errors import UsageError
from wanjax.toyworld.dataset import write_dataset
from wanjax.video import read_video, write_video

RESIZE_TOL = 1e-5      # abs, float32 matmuls vs PIL's float64 filter (measured 2.3e-6 with a fractional box)
LATENT_TOL = 1e-4      # stored vs reference latent, max|d|/max|ref| (same program; differences come from resize)
DECODE_TOL = 1e-4      # decode(stored) vs decode(reference latent)
BF16_TOL = 1e-2        # bf16 storage: relative rounding 2^-8 = 4e-3 per element
TEXT_TOL = 1e-5        # CLI on 2 devices vs in-process on 8: other reduction layouts (measured 1.2e-6)
N_TOY = 5              # 64x64 toy clips, 17 frames at 16 fps
SIZES = ("32*32", "48*32")


def _smooth_clip(t, h, w, seed):
  """uint8 [t, h, w, 3] moving colour gradients (compress well, so H.264 keeps them)."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  ph = np.random.default_rng(seed).uniform(0, 6, 3)
  frames = [np.stack([np.sin(xx / (7 + 3 * c) + yy / 11 + 0.4 * i + ph[c]) for c in range(3)], -1)
            for i in range(t)]
  return np.asarray((np.stack(frames) * 0.45 + 0.5) * 255, np.uint8)


def _caption(path, text):
  with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
    f.write(text)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("clips")
  toy = write_dataset(root, N_TOY, seed=3, frames=17, size=64)
  wide = write_video(str(root / "wide.mp4"), _smooth_clip(17, 56, 96, 1))        # w/h 1.71 -> 48*32, cropped
  _caption(wide, "a large red square moves left slowly on a gray background")
  pano = write_video(str(root / "pano.mp4"), _smooth_clip(17, 32, 128, 2))       # w/h 4: no bucket near
  _caption(pano, "a small blue circle moves up quickly on a black background")
  short = write_video(str(root / "short.mp4"), _smooth_clip(3, 64, 64, 3))      # 3 frames < 17 needed
  _caption(short, "a small green diamond moves down slowly on a gray background")
  with open(root / "corrupt.mp4", "wb") as f:
    f.write(np.random.default_rng(4).bytes(4096))
  _caption(str(root / "corrupt.mp4"), "a large white triangle moves right quickly on a brown background")
  shutil.copy(toy[0], root / "nocaption.mp4")
  return {"root": str(root), "toy": toy, "wide": wide, "pano": pano, "short": short,
          "corrupt": str(root / "corrupt.mp4"), "nocaption": str(root / "nocaption.mp4")}


def _config(**kw):
  c = toyworld.get_config(kw.pop("arg", None))
  c.sizes = SIZES
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def full_run(dataset, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("feat") / "t2v")
  c = _config()
  return c, out, pp.run(c, dataset["root"], out)


@pytest.fixture(scope="module")
def encoders(full_run):
  c, out, _ = full_run
  mesh = shd.make_mesh(c.mesh)
  return pp.build_encoders(c, mesh, tokenizer=os.path.join(out, "toy_tokenizer", "tokenizer.json")), mesh


# ------------------------------------------------------------------------------------------------ reference

def ref_indices(num_frames, fps, src_fps):
  """Index of the source frame on screen at time i/fps: the largest k with k/src_fps <= i/fps (exact)."""
  f, s = fractions.Fraction(fps), fractions.Fraction(src_fps)
  return [int(fractions.Fraction(i) / f * s) for i in range(num_frames)]


def ref_resize(frames_u8, h, w):
  """Centre crop to the aspect of h×w, PIL antialiased bicubic on float channels, clamp to [−1, 1]."""
  h0, w0 = frames_u8.shape[1:3]
  if w0 / h0 > w / h:
    cw = h0 * w / h
    box = ((w0 - cw) / 2, 0, (w0 + cw) / 2, h0)
  else:
    ch = w0 * h / w
    box = (0, (h0 - ch) / 2, w0, (h0 + ch) / 2)
  x = frames_u8.astype(np.float32) / 127.5 - 1.0
  out = np.stack([np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(fr[..., k])).resize(
      (w, h), Image.BICUBIC, box=box)) for k in range(3)], -1) for fr in x])
  return np.clip(out, -1.0, 1.0)


def ref_video(path, c, h, w):
  frames, src_fps = read_video(path)
  return ref_resize(frames[ref_indices(c.frames, c.fps, src_fps)], h, w)


def _batch_sharded(x, mesh):
  return jax.device_put(x, jax.sharding.NamedSharding(mesh, shd.spec_for(("batch",) + (None,) * (x.ndim - 1),
                                                                         x.shape, mesh)))


# ------------------------------------------------------------------------------------------------ tests

def test_geometry_matches_references():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (2, 40, 70, 3), dtype=np.uint8)
  for h, w in ((32, 48), (16, 64), (48, 48), (64, 96)):   # crop width / height, shrink and enlarge
    got = np.asarray(pp.resize_clip(x, h, w))
    assert got.shape == (2, h, w, 3)
    assert np.abs(got - ref_resize(x, h, w)).max() <= RESIZE_TOL, (h, w)
  for src in (16.0, 8.0, 24.0, 30.0, 29.97, 60.0):
    assert pp.frame_indices(81, 16.0, src).tolist() == ref_indices(81, 16.0, src), src


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
    ref = np.asarray(encode_video(enc.vae, _batch_sharded(video, mesh)))
    stored = np.stack([fs.tensor(by_src[p], "latent") for p in paths])
    assert max_rel_err(stored, ref) <= LATENT_TOL
    if h == w:
      dec = np.asarray(decode_latent(enc.vae, _batch_sharded(stored, mesh)))
      dec_ref = np.asarray(decode_latent(enc.vae, _batch_sharded(ref, mesh)))
      assert dec.shape == video.shape
      assert max_rel_err(dec, dec_ref) <= DECODE_TOL


def test_resume_after_interruption_writes_nothing_twice(full_run, dataset, tmp_path):
  _, full_out, _ = full_run
  index_path = tmp_path / "clips.json"   # a JSON index of the toy clips (also covers that input kind)
  rows = [{"video": os.path.relpath(p, tmp_path), "caption": open(p[:-4] + ".txt").read()} for p in dataset["toy"]]
  index_path.write_text(json.dumps(rows))
  out = str(tmp_path / "feat")
  with pytest.raises(pp.Interrupted):
    pp.run(_config(clips_per_shard=2, debug_stop_after_shards=1), str(index_path), out)
  first = features.read_index(out)
  assert first["shards"] == ["shard-00000.safetensors"] and len(first["clips"]) == 2
  shard0 = os.path.join(out, "shard-00000.safetensors")
  st0 = os.stat(shard0)
  s = pp.run(_config(clips_per_shard=2), str(index_path), out)
  assert (s["already_cached"], s["cached"], s["shards_written"]) == (2, N_TOY - 2, 2)
  assert os.stat(shard0).st_mtime_ns == st0.st_mtime_ns and os.stat(shard0).st_ino == st0.st_ino
  index = features.read_index(out)
  ids = [cl["id"] for cl in index["clips"]]
  assert len(ids) == len(set(ids)) == N_TOY
  for shard in index["shards"]:   # every tensor in a shard belongs to a clip the index places there, once
    keys = features.checkpoint.SafetensorsReader([os.path.join(out, shard)]).keys()
    assert sorted(keys) == sorted(f"{cl['id']}.{k}" for cl in index["clips"] if cl["shard"] == shard
                                  for k in cl["keys"])
  # Nothing left to do: no shard written, the index unchanged.
  again = pp.run(_config(clips_per_shard=2), str(index_path), out)
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
  with pytest.raises(UsageError, match="frames"):
    pp.run(_config(clips_per_shard=2, frames=5), str(index_path), out)


def test_i2v_y_and_clip_features(dataset, tmp_path):
  from wanjax.image import i2v
  from wanjax.image.clip import clip_features
  from wanjax.vae import encode_video
  paths = dataset["toy"][:2]
  index_path = tmp_path / "clips.csv"
  with open(index_path, "w", newline="") as f:
    wr = csv.writer(f)
    wr.writerow(["path", "prompt"])
    wr.writerows([[p, open(p[:-4] + ".txt").read()] for p in paths])
  c = _config(arg="i2v=True", dtype="bfloat16")
  out = str(tmp_path / "feat")
  assert pp.run(c, str(index_path), out)["cached"] == 2
  mesh = shd.make_mesh(c.mesh)
  enc = pp.build_encoders(c, mesh, tokenizer=os.path.join(out, "toy_tokenizer", "tokenizer.json"))
  video = np.stack([ref_video(p, c, 32, 32) for p in paths])                    # [2, 9, 32, 32, 3]
  cond = np.concatenate([video[:, :1], np.zeros_like(video[:, 1:])], axis=1)
  both = np.asarray(encode_video(enc.vae, _batch_sharded(np.concatenate([video, cond]), mesh)))
  clip_ref = np.asarray(clip_features(enc.clip, _batch_sharded(video[:, 0], mesh)))
  fs = features.FeatureSet(out)
  assert fs.names() == ["latent", "context", "clip_fea", "y"]
  for i in range(2):
    assert fs.view(i, "y").dtype == ml_dtypes.bfloat16 and fs.view(i, "y").shape == (3, 4, 4, 20)
    assert fs.view(i, "clip_fea").shape == (17, 24)    # tiny CLIP: 1 + (28/7)^2 tokens, width 24
    y = fs.tensor(i, "y")
    np.testing.assert_array_equal(y[..., :4], i2v.i2v_mask(3, 4, 4, 9))
    assert max_rel_err(y[..., 4:], both[2 + i]) <= BF16_TOL
    assert max_rel_err(fs.tensor(i, "latent"), both[i]) <= BF16_TOL
    assert max_rel_err(fs.tensor(i, "clip_fea"), clip_ref[i]) <= BF16_TOL
  batch = fs.batch([1, 0])
  assert batch["y"].shape == (2, 3, 4, 4, 20) and batch["context_lengths"].dtype == np.int32


def test_prompt_only_cli(tmp_path):
  prompts = ["a small red circle moves left slowly on a gray background",
             "a large blue square moves up quickly on a black background",
             "a small red circle moves left slowly on a gray background"]   # a duplicate: cached once
  (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n")
  out = str(tmp_path / "feat")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "train.preprocess", "--config", "configs/data/toyworld.py",
         "--input", str(tmp_path / "prompts.txt"), "--output", out]
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "cached 2 clips in 1 new shard(s)" in r.stdout
  fs = features.FeatureSet(out)
  assert fs.names() == ["context"] and fs.captions() == prompts[:2]
  # Equal to the text encoder called directly (same seed, same tokenizer).
  c = toyworld.get_config()
  enc = pp.build_encoders(c, shd.make_mesh("data=2"), need_video=False,
                          tokenizer=os.path.join(out, "toy_tokenizer", "tokenizer.json"))
  ctx, lengths = enc.text.encode(prompts[:2] + ["", ""])
  for i in range(2):
    assert fs.length(i) == lengths[i]
    assert max_rel_err(fs.tensor(i, "context"), ctx[i]) <= TEXT_TOL
  assert max_rel_err(fs.uncond("empty"), ctx[2]) <= TEXT_TOL
  bad = subprocess.run(cmd[:-2] + ["--output", out, "--config.frames=8"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "frames=8 must be 4k+1" in bad.stderr


def test_input_errors(tmp_path):
  with pytest.raises(UsageError, match="does not exist"):
    pp.list_inputs(str(tmp_path / "missing"))
  (tmp_path / "x.parquet").write_text("")
  with pytest.raises(UsageError, match="unknown index type"):
    pp.list_inputs(str(tmp_path / "x.parquet"))
  (tmp_path / "i.csv").write_text("clip,caption\na.mp4,hello\n")
  with pytest.raises(UsageError, match="no video column"):
    pp.list_inputs(str(tmp_path / "i.csv"))
  with pytest.raises(UsageError, match="multiples of 16"):
    pp.parse_size("830*480")
