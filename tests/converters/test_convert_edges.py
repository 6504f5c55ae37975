"""Converter edge cases a user meets: pickles holding code (zipfile and legacy torch formats), truncated `.pt`
files, a bad `--out`, failed conversions leaving nothing behind, and `--keep-quantized` on ComfyUI scaled-fp8
files whose embeddings and head are quantised too."""

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from converters.convert import convert_checkpoint
from tests.conftest import max_rel_err
from tests.converters.dit_fixtures import random_original
from wanjax.checkpoint import SafetensorsReader, save_tensors
from wanjax.dit.config import PRESETS
from wanjax.errors import CheckpointError, UsageError

TINY = PRESETS["tiny"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QRUNTIME_TOL = 1e-5   # fp8 kernels + scales at runtime vs the same weights dequantised to fp32 (measured ~2e-7)


class _Payload:
  """Unpickling this would run `touch <marker>`; a weights-only load must refuse it."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.torch
@pytest.mark.parametrize("zipfile", [True, False], ids=["zipfile", "legacy"])
def test_pickled_code_is_refused_in_one_line(tmp_path, zipfile):
  import torch
  marker = tmp_path / "ran"
  sd = {k: torch.from_numpy(v.copy()) for k, v in random_original(TINY, seed=2).items()}
  torch.save({**sd, "extra": _Payload(marker)}, str(tmp_path / "evil.pt"), _use_new_zipfile_serialization=zipfile)
  with pytest.raises(CheckpointError) as e:
    convert_checkpoint(str(tmp_path / "evil.pt"), str(tmp_path / "out"), num_heads=2, progress=False)
  msg = str(e.value)
  assert "refused" in msg and "posix.system" in msg, msg
  assert "weights_only` set to `False`" not in msg and "\n" not in msg, msg   # no advice to run the code
  assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.torch
def test_truncated_pt_is_a_checkpoint_error(tmp_path):
  import torch
  torch.save({k: torch.from_numpy(v.copy()) for k, v in random_original(TINY, seed=2).items()},
             str(tmp_path / "full.pt"))
  raw = (tmp_path / "full.pt").read_bytes()
  (tmp_path / "cut.pt").write_bytes(raw[:len(raw) // 2])
  with pytest.raises(CheckpointError, match=r"cut\.pt: cannot be read as a torch state dict"):
    convert_checkpoint(str(tmp_path / "cut.pt"), str(tmp_path / "out"), num_heads=2, progress=False)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
  d = tmp_path_factory.mktemp("orig")
  sd = random_original(TINY, seed=3)
  save_tensors(str(d / "dit.safetensors"), sd)
  return d, sd


def test_out_that_is_a_file_or_unwritable_is_a_usage_error(original, tmp_path):
  d, _ = original
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(UsageError, match=r"is an existing file"):
    convert_checkpoint(str(d / "dit.safetensors"), str(tmp_path / "a_file"), num_heads=2, progress=False)
  with pytest.raises(UsageError, match=r"cannot write to the output folder .*a_file/sub"):
    convert_checkpoint(str(d / "dit.safetensors"), str(tmp_path / "a_file" / "sub"), num_heads=2, progress=False)
  # The CLI prints it as one line and exits 2.
  r = subprocess.run([sys.executable, "-m", "converters.convert", f"--src={d / 'dit.safetensors'}",
                      f"--out={tmp_path / 'a_file'}", "--num-heads=2"], cwd=ROOT, capture_output=True, text=True,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT), timeout=120)
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")][0].endswith("(it is created if missing)")


def test_failed_conversion_leaves_no_folder_or_file(original, tmp_path):
  d, sd = original
  save_tensors(str(tmp_path / "dit.safetensors"), sd)
  raw = (tmp_path / "dit.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(raw[:len(raw) * 2 // 3])   # header intact, tensors cut short
  with pytest.raises(CheckpointError, match="truncated"):
    convert_checkpoint(str(tmp_path / "cut.safetensors"), str(tmp_path / "new" / "out"), num_heads=2, progress=False)
  assert not (tmp_path / "new" / "out").exists()
  # An existing folder keeps its earlier conversion untouched, and no temporary file is left in it.
  convert_checkpoint(str(tmp_path / "dit.safetensors"), str(tmp_path / "old"), num_heads=2, progress=False)
  before = {f: (tmp_path / "old" / f).read_bytes() for f in os.listdir(tmp_path / "old")}
  with pytest.raises(CheckpointError, match="truncated"):
    convert_checkpoint(str(tmp_path / "cut.safetensors"), str(tmp_path / "old"), num_heads=2, progress=False)
  assert {f: (tmp_path / "old" / f).read_bytes() for f in os.listdir(tmp_path / "old")} == before


def _tensors(path):
  r = SafetensorsReader([str(path / "model.safetensors")])
  return {k: np.array(r.view(k)) for k in r.keys()}


def test_keep_quantized_comfyui_scaled_fp8_with_quantized_embeddings(original, tmp_path):
  """ComfyUI scaled-fp8 files scale every 2-D Linear weight, embeddings and head included; only the block
  matmuls can stay quantised, the rest is dequantised (W = q · scale), and the result loads and runs."""
  import jax
  from wanjax.dit.load import load_dit
  from wanjax.dit.model import make_forward
  _, sd = original
  comfy, deq = {"scaled_fp8": np.zeros((0,), ml_dtypes.float8_e4m3fn)}, {}
  for k, w in sd.items():
    p = "model.diffusion_model."
    if w.ndim == 2 and k.endswith(".weight"):
      s = np.float32(np.abs(w).max() / 448)
      q = (w / s).astype(ml_dtypes.float8_e4m3fn)
      comfy[p + k], comfy[p + k[:-len("weight")] + "scale_weight"] = q, np.array([s], np.float32)
      deq[k] = q.astype(np.float32) * s
    else:
      comfy[p + k] = w
  save_tensors(str(tmp_path / "c.safetensors"), comfy)
  s = convert_checkpoint(str(tmp_path / "c.safetensors"), str(tmp_path / "keep"), num_heads=2, keep_quantized=True,
                         progress=False)
  assert s["layout"] == "comfyui" and s["config"]["quantization"]["format"] == "float8_e4m3fn"
  kept = _tensors(tmp_path / "keep")
  ffn = "model.diffusion_model.blocks.2.ffn.0."
  np.testing.assert_array_equal(kept["blocks.2.ffn.fc1.kernel"], comfy[ffn + "weight"].T)
  np.testing.assert_array_equal(kept["blocks.2.ffn.fc1.kernel_scale"],
                                np.full((1, TINY.ffn_dim), comfy[ffn + "scale_weight"][0]))
  for k, target in (("time_embedding.0.weight", "time_embedding.fc1.kernel"), ("head.head.weight", "head.head.kernel"),
                    ("text_embedding.2.weight", "text_embedding.fc2.kernel")):
    assert kept[target].dtype == np.float32 and target + "_scale" not in kept
    np.testing.assert_array_equal(kept[target], deq[k].T)
  # The kept-quantised model runs like the fully dequantised conversion.
  convert_checkpoint(str(tmp_path / "c.safetensors"), str(tmp_path / "deq"), num_heads=2, progress=False)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 3, 4, 6, 16)).astype(np.float32)
  ctx = rng.standard_normal((1, TINY.text_len, TINY.text_dim)).astype(np.float32)
  outs = []
  for name in ("keep", "deq"):
    fwd, params, rest = make_forward(load_dit(str(tmp_path / name)))
    outs.append(np.asarray(jax.jit(fwd)(params, rest, x, np.array([500]), ctx)))
  err = max_rel_err(outs[0], outs[1])
  print(f"kept fp8 vs dequantised forward: max rel err {err:.2e}")
  assert err <= QRUNTIME_TOL


def test_mixed_quantised_dtypes_name_the_dtypes(original, tmp_path):
  """A LightX2V-style file mixing int8 and fp8 weights is recognised as a DiT and fails naming both dtypes,
  not as 'matches no known model family'."""
  from tests.converters.dit_fixtures import quantize_lightx2v
  _, sd = original
  q8, _ = quantize_lightx2v(sd, "int8")
  qf, _ = quantize_lightx2v(sd, "fp8")
  for k in ("blocks.1.ffn.0.weight", "blocks.1.ffn.0.weight_scale"):
    q8[k] = qf[k]
  save_tensors(str(tmp_path / "mixed.safetensors"), q8)
  with pytest.raises(CheckpointError, match=r"dtypes \['float8_e4m3fn', 'int8'\]"):
    convert_checkpoint(str(tmp_path / "mixed.safetensors"), str(tmp_path / "out"), num_heads=2, progress=False)
  assert not (tmp_path / "out").exists()


def test_converted_folder_as_src_says_so(tmp_path):
  save_tensors(str(tmp_path / "orig.safetensors"), random_original(TINY, seed=3))
  convert_checkpoint(str(tmp_path / "orig.safetensors"), str(tmp_path / "jax"), num_heads=2, progress=False)
  with pytest.raises(UsageError, match=r"already a converted wanjax dit folder"):
    convert_checkpoint(str(tmp_path / "jax"), str(tmp_path / "again"), num_heads=2, progress=False)
  assert not (tmp_path / "again").exists()


def test_keep_quantized_partly_quantised_file_names_the_plain_weights(original, tmp_path):
  """A LightX2V-style file with some block matmuls stored in float: --keep-quantized cannot keep it as stored (the
  model stacks each block matmul over the layers in one dtype), so it fails naming the float and the quantised
  keys and the fix (was '2 missing key(s): ...weight_scale'); without the flag it converts, every kernel float."""
  from tests.converters.dit_fixtures import quantize_lightx2v
  _, sd = original
  q, deq = quantize_lightx2v(sd, "int8")
  plain = ("blocks.0.self_attn.q.weight", "blocks.1.ffn.0.weight")
  for k in plain:
    q[k] = sd[k]
    del q[k + "_scale"]
  save_tensors(str(tmp_path / "part.safetensors"), q)
  with pytest.raises(CheckpointError) as e:
    convert_checkpoint(str(tmp_path / "part.safetensors"), str(tmp_path / "keep"), num_heads=2, keep_quantized=True,
                       progress=False)
  msg = str(e.value)
  assert msg.startswith("--keep-quantized: 2 of 30 block matmul weights are stored unquantised (e.g. "
                        "blocks.0.self_attn.q.weight, blocks.1.ffn.0.weight) and 28 are int8"), msg
  assert "convert without --keep-quantized" in msg and "\n" not in msg and "missing" not in msg
  assert not (tmp_path / "keep").exists()
  s = convert_checkpoint(str(tmp_path / "part.safetensors"), str(tmp_path / "deq"), num_heads=2, progress=False)
  assert "quantization" not in s["config"]
  out = _tensors(tmp_path / "deq")
  np.testing.assert_array_equal(out["blocks.0.self_attn.q.kernel"], sd["blocks.0.self_attn.q.weight"].T)
  np.testing.assert_array_equal(out["blocks.1.ffn.fc1.kernel"], sd["blocks.1.ffn.0.weight"].T)
  np.testing.assert_array_equal(out["blocks.0.self_attn.k.kernel"], deq["blocks.0.self_attn.k.weight"].T)
