"""`python -m train.preprocess`: I2V features and the prompt-only CLI (tiny random encoders, no torch).

- I2V: `y` = [first-frame mask | VAE latent of (frame 0, zeros…)], `clip_fea` = CLIP of frame 0, bf16 storage;
  input from a CSV index.
- Prompt-only input through the CLI (duplicates cached once, the summary line, a bad config value exits non-zero);
  the stored contexts equal the text encoder called directly.
"""

import csv
import os
import subprocess
import sys

import ml_dtypes
import numpy as np

from configs.data import toyworld
from tests.conftest import max_rel_err
from tests.data.helpers import BF16_TOL, TEXT_TOL, batch_sharded, config, ref_video
from train import features
from train import preprocess as pp
from wanjax import sharding as shd
from wanjax.toyworld.dataset import write_dataset


def test_i2v_y_and_clip_features(tmp_path):
  from wanjax.image import i2v
  from wanjax.image.clip import clip_features
  from wanjax.vae import encode_video
  paths = write_dataset(tmp_path / "clips", 2, seed=5, frames=17, size=64)
  index_path = tmp_path / "clips.csv"
  with open(index_path, "w", newline="") as f:
    wr = csv.writer(f)
    wr.writerow(["path", "prompt"])
    wr.writerows([[p, open(p[:-4] + ".txt").read()] for p in paths])
  c = config(arg="i2v=True", dtype="bfloat16")
  out = str(tmp_path / "feat")
  assert pp.run(c, str(index_path), out)["cached"] == 2
  mesh = shd.make_mesh(c.mesh)
  enc = pp.build_encoders(c, mesh, tokenizer=os.path.join(out, "toy_tokenizer", "tokenizer.json"))
  video = np.stack([ref_video(p, c, 32, 32) for p in paths])                    # [2, 9, 32, 32, 3]
  cond = np.concatenate([video[:, :1], np.zeros_like(video[:, 1:])], axis=1)
  with shd.activate(mesh):   # the pipeline's mesh context: its compiled programs are reused
    both = np.concatenate([np.asarray(encode_video(enc.vae, batch_sharded(v, mesh))) for v in (video, cond)])
    clip_ref = np.asarray(clip_features(enc.clip, batch_sharded(video[:, 0], mesh)))
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
  assert bad.returncode == 2 and "frames=8 must be 4k+1" in bad.stderr
