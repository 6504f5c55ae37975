"""`python -m infer.forward` end to end on a tiny DiT: a converted directory and a raw torch `.pt` (converted on
the fly into a cache), compared with diffusers' `WanTransformer3DModel` on the same random weights."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from converters.convert import convert_checkpoint
from infer import forward as fwd_cli
from infer.models import resolve_dit
from tests.conftest import max_rel_err
from tests.converters.dit_fixtures import random_original
from wanjax.dit.config import PRESETS
from wanjax.errors import UsageError

pytestmark = pytest.mark.torch
PARITY_TOL = 1e-5     # fp32 JAX vs diffusers (see tests/converters/test_dit_convert.py)
CFG = PRESETS["tiny"]  # text_len 7: the CLI zero-pads the 5 context rows to 7, as the reference does
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  import torch
  from diffusers import WanTransformer3DModel
  from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
  d = tmp_path_factory.mktemp("fwd")
  sd = {k: torch.from_numpy(v) for k, v in random_original(CFG, seed=11).items()}
  (d / "raw").mkdir()
  torch.save(sd, str(d / "raw" / "dit.pt"))
  (d / "raw" / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 24, "num_heads": 2,
                                                     "num_layers": 3, "text_len": 7}))
  convert_checkpoint(str(d / "raw" / "dit.pt"), str(d / "conv"), progress=False)
  ref = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                              out_channels=16, text_dim=20, freq_dim=256, ffn_dim=40, num_layers=3,
                              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6).eval()
  ref.load_state_dict(convert_wan_transformer_to_diffusers({k: v.clone() for k, v in sd.items()}), strict=True)
  rng = np.random.default_rng(12)
  inputs = {"x": rng.standard_normal((2, 16, 3, 4, 6)).astype(np.float32), "t": np.array([999, 500], np.int64),
            "context": rng.standard_normal((2, 5, 20)).astype(np.float32)}
  np.savez(d / "in.npz", **inputs)

  def reference(x, t, context):
    padded = np.concatenate([context, np.zeros((context.shape[0], 7 - context.shape[1], 20), np.float32)], 1)
    with torch.no_grad():
      return ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(padded), return_dict=False)[0].numpy()

  return dict(dir=d, inputs=inputs, reference=reference, want=reference(**inputs))


def test_forward_converted_dir(setup):
  d = setup["dir"]
  fwd_cli.forward("dit", str(d / "conv"), str(d / "in.npz"), str(d / "out.npz"))
  with np.load(d / "out.npz") as z:
    v = z["v"]
  assert v.dtype == np.float32 and v.shape == (2, 16, 3, 4, 6)
  assert max_rel_err(v, setup["want"]) <= PARITY_TOL


def test_cli_converts_raw_pt_once(setup, tmp_path):
  d = setup["dir"]
  cache = tmp_path / "cache"
  cmd = [sys.executable, "-m", "infer.forward", "--model", str(d / "raw" / "dit.pt"), "--inputs",
         str(d / "in.npz"), "--out", str(tmp_path / "out.npz"), "--cache-dir", str(cache)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "dit forward: wrote v (2, 16, 3, 4, 6)" in p.stdout
  with np.load(tmp_path / "out.npz") as z:
    assert max_rel_err(z["v"], setup["want"]) <= PARITY_TOL
  (cached,) = [c for c in cache.iterdir() if not c.name.startswith(".")]
  stamp = os.stat(cached / "model.safetensors").st_mtime_ns
  assert resolve_dit(str(d / "raw" / "dit.pt"), cache_dir=str(cache)) == str(cached)   # reused, not redone
  assert os.stat(cached / "model.safetensors").st_mtime_ns == stamp
  assert resolve_dit(str(d / "conv"), cache_dir=str(cache)) == str(d / "conv")


def test_cli_reports_bad_inputs_in_one_line(setup, tmp_path):
  x = setup["inputs"]["x"]
  np.savez(tmp_path / "bad.npz", x=x, t=setup["inputs"]["t"])
  cmd = [sys.executable, "-m", "infer.forward", "--model", str(setup["dir"] / "conv"), "--inputs",
         str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o.npz")]
  p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 2
  assert p.stderr.strip().splitlines()[-1].startswith("error: inputs have no 'context'")
  assert not (tmp_path / "o.npz").exists()


def test_causal_block_mask(setup, tmp_path):
  """With one frame per block, frame 0 sees only itself: its output equals the reference on frame 0 alone."""
  d = setup["dir"]
  out = fwd_cli.run_dit(str(d / "conv"), setup["inputs"], causal=True, frames_per_block=1)["v"]
  inp = setup["inputs"]
  first = setup["reference"](np.ascontiguousarray(inp["x"][:, :, :1]), inp["t"], inp["context"])
  assert max_rel_err(out[:, :, :1], first) <= PARITY_TOL
  assert max_rel_err(out[:, :, 1:], setup["want"][:, :, 1:]) > 1e-3   # later frames: the mask is active


@pytest.mark.parametrize("edit,match", [
    (lambda i: i.update(x=i["x"][:, :, :, :3]), r"H, W = 3, 6.*even"),
    (lambda i: i.update(x=i["x"][0]), r"'x' has shape \(16, 3, 4, 6\); expected x \[B, 16, F, H, W\]"),
    (lambda i: i.update(x=i["x"][:, :4]), r"4 channels, expected 16"),
    (lambda i: i.update(t=np.zeros((2, 5))), r"'t' has shape \(2, 5\); expected \[2\] or per-frame \[2, 3\]"),
    (lambda i: i.update(context=np.zeros((2, 9, 20))), r"L <= 7"),
    (lambda i: i.update(y=np.zeros((2, 20, 3, 4, 6))), r"unexpected inputs \['y'\] for a t2v DiT"),
])
def test_input_validation(setup, edit, match):
  inputs = dict(setup["inputs"])
  edit(inputs)
  with pytest.raises(UsageError, match=match):
    fwd_cli.check_dit_inputs(CFG, inputs)


def test_unknown_component_and_flags(setup, tmp_path):
  with pytest.raises(UsageError, match=r"unknown component 'vae'; valid: dit"):
    fwd_cli.forward("vae", str(setup["dir"] / "conv"), str(setup["dir"] / "in.npz"), str(tmp_path / "o.npz"))
  with pytest.raises(UsageError, match="only applies with --causal"):
    fwd_cli.run_dit(str(setup["dir"] / "conv"), setup["inputs"], frames_per_block=2)
