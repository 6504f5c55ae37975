"""What `converters.convert` says about the inputs a user gets wrong: shard indexes with a missing shard or shards
in a subfolder, folders holding several variants, a diffusers pipeline root or only .pt files, files whose
content is not what their name says (Git LFS pointers, torch zips named .safetensors, safetensors named .pt,
.npz, empty or text files), LoRA files in any key spelling, and keys behind a training wrapper's prefix."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from converters.convert import convert_checkpoint
from tests.converters.dit_fixtures import random_original
from wanjax.checkpoint import save_tensors
from wanjax.dit.config import PRESETS
from wanjax.errors import CheckpointError, UsageError

TINY = PRESETS["tiny"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def sd():
  return random_original(TINY, seed=3)


def _convert(src, out):
  return convert_checkpoint(str(src), str(out), num_heads=2, progress=False)


def _fails(src, out, pattern, **kw):
  with pytest.raises(CheckpointError, match=pattern) as e:
    convert_checkpoint(str(src), str(out), num_heads=2, progress=False, **kw)
  assert "\n" not in str(e.value) and not os.path.exists(out)
  return str(e.value)


def _shards(folder, sd, index_name="m.safetensors.index.json", sub=""):
  keys = sorted(sd)
  names = [f"{sub}m-0000{i}-of-00002.safetensors" for i in (1, 2)]
  os.makedirs(folder / sub, exist_ok=True)
  for i, name in enumerate(names):
    save_tensors(str(folder / name), {k: sd[k] for k in keys[i::2]})
  with open(folder / index_name, "w") as f:
    json.dump({"metadata": {}, "weight_map": {k: names[j % 2] for j, k in enumerate(keys)}}, f)


def test_shard_index_missing_shard_names_it(sd, tmp_path):
  _shards(tmp_path / "m", sd)
  os.remove(tmp_path / "m" / "m-00002-of-00002.safetensors")
  for src in (tmp_path / "m", tmp_path / "m" / "m.safetensors.index.json"):
    msg = _fails(src, tmp_path / "out", "1 of the 2 shard files its weight_map lists are missing")
    assert msg.endswith("m-00002-of-00002.safetensors; download them beside the index"), msg


def test_shard_index_with_shards_in_a_subfolder_converts(sd, tmp_path):
  _shards(tmp_path / "m", sd, sub="shards/")
  _convert(tmp_path / "m", tmp_path / "out")   # was "shard files missing" (only the base name was looked for)
  _convert(tmp_path / "m" / "m.safetensors.index.json", tmp_path / "out2")
  assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tmp_path / "out2" / "model.safetensors").read_bytes()


def test_folder_with_variants_asks_for_one(sd, tmp_path):
  # Two shard indexes (e.g. diffusers' fp16 variant): one was picked silently by name order.
  _shards(tmp_path / "two", sd)
  _shards(tmp_path / "two", sd, index_name="m.fp16.safetensors.index.json")
  _fails(tmp_path / "two", tmp_path / "out", r"folder has 2 shard indexes \(m\.fp16\.safetensors\.index\.json, "
                                             r"m\.safetensors\.index\.json; .*pass the one to convert as --src")
  # Two full files with the same keys.
  (tmp_path / "var").mkdir()
  for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
    save_tensors(str(tmp_path / "var" / name), sd)
  _fails(tmp_path / "var", tmp_path / "out", r"key '.*' is in both .*fp16\.safetensors and .*model\.safetensors: "
                                             r"these files overlap .* pass the one file or shard index")


def test_folder_without_safetensors_points_at_what_it_holds(sd, tmp_path):
  root = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
  for sub in ("transformer", "vae"):
    (root / sub).mkdir(parents=True)
    save_tensors(str(root / sub / "diffusion_pytorch_model.safetensors"), {"x": np.zeros(2, np.float32)})
  (root / "model_index.json").write_text("{}")
  sub = re.escape(str(root / "transformer"))
  _fails(root, tmp_path / "out", r"no \*\.safetensors files .*; it holds the model subfolders transformer/, vae/ "
                                 rf"\(a diffusers pipeline\?\): pass the one to convert, e.g\. --src {sub}$")
  (tmp_path / "pt").mkdir()
  (tmp_path / "pt" / "model.pt").write_bytes(b"\x80\x02")
  _fails(tmp_path / "pt", tmp_path / "out", r"; it holds model\.pt: pass the file to convert as --src$")


def test_file_content_that_does_not_match_its_name(sd, tmp_path):
  save_tensors(str(tmp_path / "real.safetensors"), sd)
  lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 5678\n"
  cases = {
      "pointer.safetensors": (lfs, r"pointer\.safetensors: not a safetensors file: it is a Git LFS pointer"),
      "pointer.pt": (lfs, r"pointer\.pt: cannot be read as a torch state dict: it is a Git LFS pointer"),
      "named.pt": ((tmp_path / "real.safetensors").read_bytes(),
                   r"named\.pt: is a safetensors file despite its \.pt name; rename it to \.safetensors"),
      "empty.safetensors": (b"", r"empty\.safetensors: not a safetensors file: it is an empty file"),
      "notes.safetensors": (b"weights are on the other disk\n", r"it is a text file starting 'weights are"),
  }
  for name, (raw, pattern) in cases.items():
    (tmp_path / name).write_bytes(raw)
    _fails(tmp_path / name, tmp_path / "out", pattern)
  np.savez(str(tmp_path / "w.npz"), a=np.zeros(3))
  _fails(tmp_path / "w.npz", tmp_path / "out", r"unknown checkpoint file type \(it is a NumPy \.npz archive, not a "
                                              r"model checkpoint\)")


@pytest.mark.torch
def test_torch_zip_named_safetensors(sd, tmp_path):
  import torch
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, str(tmp_path / "x.safetensors"))
  _fails(tmp_path / "x.safetensors", tmp_path / "out",
         r"x\.safetensors: not a safetensors file: it is a torch checkpoint \(torch\.save zip\); give it a \.pt name")


LORAS = {   # every spelling wanjax.lora reads; none is a model checkpoint
    "comfyui": ("diffusion_model.blocks.{i}.self_attn.q.lora_down.weight", "diffusion_model.blocks.{i}.self_attn.q"
                ".lora_up.weight"),
    "peft": ("transformer.blocks.{i}.attn1.to_q.lora_A.weight", "transformer.blocks.{i}.attn1.to_q.lora_B.weight"),
    "peft_default": ("base_model.model.blocks.{i}.ffn.0.lora_A.default.weight",
                     "base_model.model.blocks.{i}.ffn.0.lora_B.default.weight"),
    "kohya": ("lora_unet_blocks_{i}_cross_attn_k.alpha", "lora_unet_blocks_{i}_cross_attn_k.lora_down.weight"),
    "diff": ("diffusion_model.blocks.{i}.norm3.diff", "diffusion_model.blocks.{i}.diff_m"),
}


@pytest.mark.parametrize("style", sorted(LORAS))
def test_lora_file_is_named_as_one(tmp_path, style):
  keys = [k.format(i=i) for i in range(3) for k in LORAS[style]]
  save_tensors(str(tmp_path / "l.safetensors"), {k: np.zeros((2, 2), np.float32) for k in keys})
  msg = _fails(tmp_path / "l.safetensors", tmp_path / "out", r"l\.safetensors: this is a LoRA / weight-diff file "
                                                              r"\(6 of its 6 keys, e\.g\. '")
  assert msg.endswith("a safetensors LoRA needs no conversion, it is merged when sampling (infer.sample "
                      "--config.lora=PATH[:strength])"), msg
  assert ".alpha'" not in msg   # the example is a down/up or diff key
  _fails(tmp_path / "l.safetensors", tmp_path / "out", r"this is a LoRA / weight-diff file", family="dit")


def test_lora_file_via_cli_is_one_line(tmp_path):
  keys = [k.format(i=0) for k in LORAS["comfyui"]]
  save_tensors(str(tmp_path / "l.safetensors"), {k: np.zeros((2, 2), np.float32) for k in keys})
  r = subprocess.run([sys.executable, "-m", "converters.convert", f"--src={tmp_path / 'l.safetensors'}",
                      f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
  assert len(errors) == 1 and "this is a LoRA / weight-diff file" in errors[0], r.stderr[-2000:]
  assert not (tmp_path / "out").exists()


@pytest.mark.torch
@pytest.mark.parametrize("out_name", ["loras", "loras/mine.safetensors"])
def test_torch_lora_is_rewritten_as_safetensors(tmp_path, out_name):
  """A .pt LoRA (which wanjax.lora cannot read without torch) comes out as safetensors with the same keys and
  values, bf16 kept; `read_lora_file` reads it and its error for a .pt names this command."""
  import ml_dtypes
  import torch
  from wanjax.lora import read_lora_file
  keys = [k.format(i=i) for i in range(2) for k in LORAS["comfyui"]]
  sd = {k: torch.randn(3, 2, dtype=torch.bfloat16) for k in keys}
  sd["diffusion_model.blocks.0.self_attn.q.alpha"] = torch.tensor(4.0)
  torch.save(sd, str(tmp_path / "style.pt"))
  with pytest.raises(UsageError, match=r"style\.pt' is not a \.safetensors file; rewrite a \.pt/\.pth LoRA as "
                                       r"safetensors with `python -m converters\.convert --src LORA\.pt --out DIR`"):
    read_lora_file(str(tmp_path / "style.pt"))
  s = convert_checkpoint(str(tmp_path / "style.pt"), str(tmp_path / out_name), progress=False)
  want = tmp_path / ("loras/style.safetensors" if out_name == "loras" else out_name)
  assert s["family"] == "lora" and s["out_dir"] == str(want) and s["tensors"] == 5
  got = read_lora_file(str(want))
  assert sorted(got) == sorted(sd)
  for k, v in sd.items():
    want_v = v.float().numpy() if v.dtype == torch.float32 else v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    assert got[k].dtype == want_v.dtype and np.array_equal(np.asarray(got[k]), want_v), k
  assert sorted(os.listdir(want.parent)) == [want.name]
  # --dtype casts the floating tensors.
  s = convert_checkpoint(str(tmp_path / "style.pt"), str(tmp_path / "f32"), dtype="float32", progress=False)
  assert read_lora_file(s["out_dir"])[keys[0]].dtype == np.float32


def test_training_wrapper_prefix_is_read_through(sd, tmp_path, caplog):
  save_tensors(str(tmp_path / "plain.safetensors"), sd)
  save_tensors(str(tmp_path / "ddp.safetensors"), {"module._orig_mod." + k: v for k, v in sd.items()})
  _convert(tmp_path / "plain.safetensors", tmp_path / "a")
  import logging
  with caplog.at_level(logging.WARNING):
    s = _convert(tmp_path / "ddp.safetensors", tmp_path / "b")   # was "matches no known model family"
  assert s["layout"] == "wan" and "every key starts with 'module._orig_mod.'" in caplog.text
  for f in ("model.safetensors", "config.json"):
    assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
  # A prefix over keys of no known family still fails, naming the file.
  save_tensors(str(tmp_path / "other.safetensors"), {"module.x.weight": np.zeros(2, np.float32)})
  _fails(tmp_path / "other.safetensors", tmp_path / "out", r"other\.safetensors: checkpoint matches no known model")


@pytest.mark.parametrize("heads", [0, -2])
def test_num_heads_below_one_is_refused(sd, tmp_path, heads):
  # 0 was a ZeroDivisionError traceback; -2 wrote a config with num_heads=-2.
  save_tensors(str(tmp_path / "d.safetensors"), sd)
  with pytest.raises(UsageError, match=rf"--num-heads={heads} must be a whole number >= 1"):
    convert_checkpoint(str(tmp_path / "d.safetensors"), str(tmp_path / "out"), num_heads=heads, progress=False)
  assert not (tmp_path / "out").exists()


@pytest.mark.torch
def test_subkey_on_a_flat_pt_says_drop_it(sd, tmp_path):
  import torch
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, str(tmp_path / "flat.pt"))
  _fails(tmp_path / "flat.pt", tmp_path / "out", "no entry 'generator': the file is a flat state dict of 96 entries "
                                                 "with no nested one; drop --subkey", subkey="generator")
  torch.save({"generator": {}, "critic": {}}, str(tmp_path / "nested.pt"))
  with pytest.raises(CheckpointError, match=r"no entry 'generator_ema'; its nested state dicts are "
                                            r"\['critic', 'generator'\]"):
    convert_checkpoint(str(tmp_path / "nested.pt"), str(tmp_path / "out"), subkey="generator_ema", progress=False)


def test_out_folder_with_other_weights_is_refused(sd, tmp_path):
  """The loaders read every *.safetensors of a model folder: converting beside another one would mix two models
  (the same one-line refusal as train.export's)."""
  save_tensors(str(tmp_path / "m.safetensors"), sd)
  out = tmp_path / "out"
  out.mkdir()
  (out / "lora.safetensors").write_bytes(b"x")
  with pytest.raises(UsageError, match=r"--out .*out: the folder already holds other safetensors files "
                                       r"\['lora\.safetensors'\] \(loaders read every \*\.safetensors"):
    convert_checkpoint(str(tmp_path / "m.safetensors"), str(out), num_heads=2, progress=False)
  assert sorted(os.listdir(out)) == ["lora.safetensors"]


@pytest.mark.torch
def test_torch_checkpoint_is_opened_once(sd, tmp_path, monkeypatch):
  """A .pt is unpickled once per conversion (the LoRA check and the conversion share it), model or LoRA."""
  import torch
  from converters import convert
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, str(tmp_path / "m.pt"))
  keys = [k.format(i=0) for k in LORAS["comfyui"]]
  torch.save({k: torch.zeros(2, 2) for k in keys}, str(tmp_path / "l.pt"))
  calls, real = [], convert.open_checkpoint
  monkeypatch.setattr(convert, "open_checkpoint", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
  assert convert.convert_checkpoint(str(tmp_path / "m.pt"), str(tmp_path / "out"), num_heads=2,
                                    progress=False)["family"] == "dit"
  assert convert.convert_checkpoint(str(tmp_path / "l.pt"), str(tmp_path / "loras"), progress=False)["family"] == "lora"
  assert calls == [str(tmp_path / "m.pt"), str(tmp_path / "l.pt")]
