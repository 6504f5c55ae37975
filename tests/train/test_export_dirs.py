"""The trainers' model-folder exports (`train/export.py`, `train/post_training.py: export_dit`): one writer that
replaces an earlier export crash-safely (`wanjax/model_dir.py`; formerly the old folder was renamed aside and the
new one renamed in, so a crash between the two renames lost the user's export), and `python -m train.export` of
the post-training runs' checkpoints (formerly refused for cfg_distill / step_distill), equal to the trainer's own
end-of-run export of the same step."""

import dataclasses
import importlib
import json
import logging
import os

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from train import export as ex
from train import post_training as pt
from wanjax import model_dir
from wanjax.dit.config import PRESETS
from wanjax.dit.load import load_dit
from wanjax.dit.model import WanDiT
from wanjax.errors import UsageError

TINY = PRESETS["tiny"]
NEW = dataclasses.replace(TINY, num_layers=2, guidance_embed=True)   # differs in shape and config


class _Crash(BaseException):
  """Stands for the process dying: nothing catches it as an error."""


def _params(cfg, seed):
  return nnx.to_pure_dict(nnx.state(WanDiT(cfg, rngs=nnx.Rngs(seed)), nnx.Param))


def _visible(folder):
  return {n: (folder / n).read_bytes() for n in os.listdir(folder) if not n.startswith(".")}


def _config(name, arg="smoke=True"):
  return importlib.import_module(f"configs.train.{name}").get_config(arg)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  d = tmp_path_factory.mktemp("pairs")
  old, new = _params(TINY, 0), _params(NEW, 1)
  pt.export_dit(str(d / "old"), TINY, old)
  pt.export_dit(str(d / "new"), NEW, new)
  return old, new, _visible(d / "old"), _visible(d / "new")


def test_crash_at_every_rename_keeps_a_whole_pair_and_the_next_export_finishes(pairs, tmp_path, monkeypatch,
                                                                                caplog):
  """The n-th `os.replace` of a re-export dies, for every n: the folder always exists and holds the old pair,
  the new pair, or no config.json (the loaders refuse it); the next export into it finishes the replacement."""
  old, new, old_files, new_files = pairs
  real = os.replace
  n = 0
  while True:
    out = tmp_path / f"out{n}"
    pt.export_dit(str(out), TINY, old)
    calls = []

    def crashing(a, b):
      calls.append(b)
      if len(calls) == n + 1:
        raise _Crash
      return real(a, b)

    monkeypatch.setattr(os, "replace", crashing)
    try:
      pt.export_dit(str(out), NEW, new)
      crashed = False
    except _Crash:
      crashed = True
    monkeypatch.setattr(os, "replace", real)
    seen = _visible(out)
    assert seen in (old_files, new_files) or "config.json" not in seen, (n, calls[-1], sorted(seen))
    journalled = os.path.exists(out / model_dir.JOURNAL)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      ex.write_dit(str(out), TINY, old)   # the next export: first finishes the interrupted one, then writes
    assert ("export was interrupted while replacing its files; finished it" in caplog.text) == journalled, n
    assert _visible(out) == old_files and sorted(os.listdir(out)) == ["config.json", "model.safetensors"], n
    if not crashed:
      break
    n += 1
  assert n == 7   # staged weights, staged config, journal, 2 old files aside, 2 new files in


def test_interrupted_export_is_refused_by_the_loader_then_finished(pairs, tmp_path, monkeypatch):
  _, new, _, new_files = pairs
  out = tmp_path / "out"
  pt.export_dit(str(out), TINY, pairs[0])
  real = os.replace

  def crashing(a, b):   # dies after the old pair went aside, before the new weights come in
    if b == str(out / "model.safetensors"):
      raise _Crash
    return real(a, b)

  monkeypatch.setattr(os, "replace", crashing)
  with pytest.raises(_Crash):
    pt.export_dit(str(out), NEW, new)
  monkeypatch.setattr(os, "replace", real)
  from infer.models import resolve_dit
  assert "config.json" not in _visible(out)
  with pytest.raises(UsageError, match=r"holds \.convert-pending\.json: a conversion"):
    resolve_dit(str(out), cache_dir=str(tmp_path / "cache"))
  assert model_dir.recover(str(out)) == ["model.safetensors", "config.json"]
  assert _visible(out) == new_files
  assert load_dit(str(out)).cfg == NEW


def test_export_keeps_other_files_and_refuses_other_safetensors(pairs, tmp_path):
  old = pairs[0]
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  ex.write_dit(str(out), TINY, old)
  assert (out / "notes.txt").read_text() == "mine"   # formerly the whole folder was replaced
  (out / "other.safetensors").write_bytes(b"x")
  with pytest.raises(UsageError, match=r"--out .*out: the folder already holds other safetensors files "
                                       r"\[.*other\.safetensors'\]"):
    ex.write_dit(str(out), TINY, old)


def test_trainer_export_is_the_train_export_writer(pairs, tmp_path):
  """`post_training.export_dit` writes what `train.export` writes for the same params (one writer, one layout)."""
  old = pairs[0]
  pt.export_dit(str(tmp_path / "a"), TINY, old)
  ex.write_dit(str(tmp_path / "b"), TINY, old)
  assert _visible(tmp_path / "a") == _visible(tmp_path / "b")
  config = json.loads((tmp_path / "a" / "config.json").read_text())
  assert config["family"] == "dit" and config["source_layout"] == ex.SOURCE_LAYOUT


def test_dit_config_of_the_post_training_runs():
  c = _config("cfg_distill")
  assert ex.dit_config(c, "generator") == ("tiny", dataclasses.replace(TINY, guidance_embed=True))
  assert ex.dit_config(c, "teacher") == ("tiny", TINY)
  c = _config("step_distill")   # the student has the teacher's (guidance-embedded) config
  with c.unlocked():
    c.models.generator.guidance_embed = False
  assert ex.dit_config(c, "generator")[1] == dataclasses.replace(TINY, guidance_embed=True)


def test_reward_lora_export_points_at_the_lora_file(tmp_path):
  with pytest.raises(UsageError, match=r"objective='reward_lora' trains a LoRA, not a DiT: .*"
                                       r"w/lora/step_<N>\.safetensors"):
    ex.export(_config("reward_lora"), str(tmp_path / "w"), str(tmp_path / "out"))


@pytest.mark.slow
@pytest.mark.parametrize("name,arg,ema", [("cfg_distill", "smoke=True", False),
                                         ("step_distill", "smoke=True,mode=consistency", True)])
def test_train_export_of_a_post_training_checkpoint_equals_the_trainers_export(tmp_path, name, arg, ema):
  """Train 2 steps with the trainer's end-of-run export, then `train.export` the step-2 checkpoint (the EMA for
  consistency step distillation, which is what its trainer exports). The teacher is fully random (the smoke
  init zeroes the head, which would leave every gradient zero), so the trained params and their EMA move."""
  from infer import demo
  from wanjax import sharding as shd
  c = _config(name, arg)
  c.total_steps = c.checkpoint_every = 2
  assert (c.generator.ema_decay > 0) == ema
  teacher_cfg = dataclasses.replace(TINY, guidance_embed=c.models.teacher.guidance_embed)
  teacher = demo.random_model(lambda: WanDiT(teacher_cfg, rngs=nnx.Rngs(0)), seed=3)
  pt.export_dit(str(tmp_path / "teacher"), teacher_cfg, nnx.to_pure_dict(nnx.state(teacher, nnx.Param)))
  c.models.teacher.weights = str(tmp_path / "teacher")
  work = tmp_path / "w"
  pt.train(c, str(work), shd.make_mesh(c.mesh), shd.override_rules(c.sharding_overrides))
  s = ex.export(c, str(work), str(tmp_path / "out"), ema=ema, step=2)
  assert s == {"kind": "dit", "preset": "tiny", "step": 2, "role": "generator", "ema": ema,
               "out": str(tmp_path / "out")}
  mine, theirs = tmp_path / "out", work / "export"
  assert json.loads((mine / "config.json").read_text()) == json.loads((theirs / "config.json").read_text())
  a, b = load_file(str(mine / "model.safetensors")), load_file(str(theirs / "model.safetensors"))
  assert sorted(a) == sorted(b) and "guidance_embedding.fc1.kernel" in a
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  start = load_file(str(tmp_path / "teacher" / "model.safetensors"))
  assert any(not np.array_equal(a[k], start[k]) for k in start), "the 2 steps must have moved the params"
  if ema:   # the raw params differ from their EMA: the flag picks what the trainer exported
    ex.export(c, str(work), str(tmp_path / "raw"), ema=False, step=2)
    raw = load_file(str(tmp_path / "raw" / "model.safetensors"))
    assert any(not np.array_equal(raw[k], a[k]) for k in a)
  assert load_dit(str(mine)).cfg == dataclasses.replace(TINY, guidance_embed=True)


def test_bf16_params_are_written_as_bf16_and_load_back_equal(tmp_path):
  """A bf16-weights run exports bf16 tensors (half the file, lossless), float32 params stay float32."""
  import jax
  import ml_dtypes
  params = _params(TINY, 2)
  half = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16), params)
  pt.export_dit(str(tmp_path / "bf16"), TINY, half)
  pt.export_dit(str(tmp_path / "f32"), TINY, params)
  b, f = load_file(str(tmp_path / "bf16" / "model.safetensors")), load_file(str(tmp_path / "f32" / "model.safetensors"))
  assert sorted(b) == sorted(f) and {v.dtype for v in b.values()} == {np.dtype(ml_dtypes.bfloat16)}
  assert {v.dtype for v in f.values()} == {np.dtype(np.float32)}
  for k in f:
    np.testing.assert_array_equal(b[k], f[k].astype(ml_dtypes.bfloat16), err_msg=k)


def test_unwritable_out_and_unreadable_src_are_one_line(tmp_path):
  """`--out` under a file, and a .pt the user cannot read, are UsageError/CheckpointError lines, not OSError
  tracebacks."""
  from converters.reader import _sniff
  from wanjax.errors import CheckpointError
  (tmp_path / "f").write_text("x")
  with pytest.raises(UsageError, match=r"--out .*/f/model: cannot create the folder \(Not a directory\)"):
    ex.write_model_dir(str(tmp_path / "f" / "model"), {"a": np.zeros(2, np.float32)}, {"family": "dit"})
  gone = tmp_path / "x.pt"
  gone.mkdir()   # reading a directory as a file fails like an unreadable file does, also as root
  with pytest.raises(CheckpointError, match=r"x\.pt: cannot be read \(Is a directory\)"):
    _sniff(str(gone))   # the first read of a .pt (open_source calls it before torch.load)
