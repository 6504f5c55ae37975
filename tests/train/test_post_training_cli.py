"""The post-training smoke configs through the real CLI (`python -m train.distill`), chained as in practice:
CFG distillation exports a guidance-embedded model, half2 step distillation loads it as its teacher, and the
reward LoRA trainer fine-tunes a guidance-embedded generator and exports a LoRA that `wanjax.lora` loads."""

import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(config, workdir, *extra):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  cmd = [sys.executable, "-m", "train.distill", f"--config={os.path.join(ROOT, 'configs', 'train', config)}",
         f"--workdir={workdir}", "--config.total_steps=2", "--config.checkpoint_every=2", *extra]
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "2", "default"))
  assert int(state["step"]) == 2
  return state


@pytest.mark.slow
def test_cfg_then_half2_then_reward_lora(tmp_path):
  import dataclasses
  from infer import demo
  from train import post_training as pt
  from wanjax import lora
  from wanjax.dit.config import PRESETS
  from wanjax.dit.load import read_config
  from wanjax.dit.model import WanDiT

  cfgd = tmp_path / "cfgd"
  _run("cfg_distill.py:smoke=True", str(cfgd))
  cfg, _ = read_config(str(cfgd / "export"))
  assert cfg.guidance_embed and cfg.dim == PRESETS["tiny"].dim

  half = tmp_path / "half"
  state = _run("step_distill.py:smoke=True", str(half), f"--config.models.teacher.weights={cfgd / 'export'}")
  assert "guidance_embedding" in state["teacher"] and read_config(str(half / "export"))[0].guidance_embed

  # A generator with every parameter random (the smoke init zeroes the head, which would block all gradients).
  gen = tmp_path / "gen"
  guided = dataclasses.replace(PRESETS["tiny"], guidance_embed=True)
  model = demo.random_model(lambda: WanDiT(guided, rngs=nnx.Rngs(0)), seed=5)
  pt.export_dit(str(gen), guided, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  rl = tmp_path / "rl"
  _run("reward_lora.py:smoke=True", str(rl), f"--config.models.generator.weights={gen}", "--config.log_every=1")
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  from train_toyworld import read_scalars
  lrs = read_scalars(str(rl / "tb"))["lr/lora"]     # the cosine schedule's rate of each step, not the base rate
  np.testing.assert_allclose([v for _, v in lrs], [1e-4, 5e-5], rtol=1e-5)
  files = sorted(os.listdir(rl / "lora"))
  assert files == ["last.safetensors", "step_2.safetensors"]
  tensors = lora.read_lora_file(str(rl / "lora" / "last.safetensors"))
  ups = [np.asarray(v) for k, v in tensors.items() if k.endswith("lora_up.weight")]
  assert len(ups) == 3 * 10 and max(np.abs(u).max() for u in ups) > 0, "the LoRA must have been trained"
  changed = lora.merge_loras(nnx.state(model, nnx.Param), [(str(rl / "lora" / "last.safetensors"), 1.0)],
                             dry_run=True)
  assert len(changed) == 10
