"""What a user of the training CLIs sees when something is wrong: one-line usage errors (typo'd config field,
missing config file / workdir / data, mis-shaped latents), smoke configs that run on a one-device CPU, the
non-finite policy when an update overflows the params, and `train.export`'s checkpoint-step errors."""

import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import export, loop
from train import state as st
from wanjax import sharding as shd
from wanjax.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "train.flow_matching", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def _one_error_line(r):
  assert r.returncode == 2, r.stderr[-2000:]   # a usage error (infer/cli.py: 2 = the user's input is at fault)
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  assert lines and lines[-1].startswith("error: "), r.stderr[-2000:]
  return lines[-1]


# ------------------------------------------------------------------------------------------------ flags

def test_typo_in_config_field_is_one_line(tmp_path):
  line = _one_error_line(_cli("--config=configs/train/flow_matching.py:smoke=True", f"--workdir={tmp_path}",
                              "--config.data.latens=x"))
  assert "--config.data.latens" in line and "'latents'" in line
  assert not os.listdir(tmp_path)


def test_missing_config_file_and_workdir_are_one_line(tmp_path):
  line = _one_error_line(_cli("--config=configs/train/no_such_config.py", f"--workdir={tmp_path}"))
  assert "no_such_config.py" in line and "cannot load" in line
  line = _one_error_line(_cli("--config=configs/train/flow_matching.py:smoke=True"))
  assert "--workdir is required" in line
  assert not os.path.exists(os.path.join(ROOT, "prompt_cache"))


def test_help_lists_the_trainer_flags():
  r = _cli("--help")   # absl's --help exits 1
  assert "--config:" in r.stdout and "--workdir:" in r.stdout, r.stdout


# ------------------------------------------------------------------------------------------------ configs

def _train_configs():
  import importlib
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "train", "*.py")))
  return [importlib.import_module(f"configs.train.{n}") for n in names if n != "__init__"]


@pytest.mark.parametrize("module", _train_configs(), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_smoke_config_fits_one_device(module):
  # README: "Every config takes :smoke=True (tiny models, a few steps, CPU)" -- a plain CPU has one device.
  try:
    c = module.get_config("smoke=True")
  except UsageError:      # dmd_smoke is a smoke config already (no args)
    c = module.get_config()
  mesh = shd.make_mesh(c.mesh, devices=jax.devices()[:1])
  assert mesh.devices.size == 1


# ------------------------------------------------------------------------------------------------ data

def _teacher_config(**data):
  from configs.train import toyworld_teacher
  c = toyworld_teacher.get_config("smoke=True")
  with c.unlocked():
    c.data.update(data)
  return c


def test_flow_matching_missing_latents_named(tmp_path):
  from train import flow_matching
  missing = str(tmp_path / "no_features")
  with pytest.raises(UsageError, match="no_features"):
    flow_matching.train(_teacher_config(latents=missing), str(tmp_path / "w"))
  with pytest.raises(UsageError, match="config.data.latents is empty"):
    flow_matching.train(_teacher_config(), str(tmp_path / "w"))


@pytest.mark.parametrize("shape", [(8, 3, 8, 8, 12), (8, 3, 7, 8, 16)])
def test_flow_matching_latent_shape_checked_before_compile(tmp_path, shape):
  from train import flow_matching
  np.save(tmp_path / "shard.npy", np.zeros(shape, np.float32))
  with pytest.raises(UsageError, match=r"latents have shape \(3, \d, 8, \d+\)"):
    flow_matching.train(_teacher_config(latents=str(tmp_path), random_contexts=8), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


# ------------------------------------------------------------------------------------------------ non-finite

def test_update_that_overflows_params_is_skipped():
  # A finite loss and gradient, but lr 1e40 overflows float32 params: the step must count as non-finite
  # (else the loop would checkpoint inf params as the "last good" state).
  params = {"w": jnp.asarray([0.5, -0.25], jnp.float32)}
  tx = st.make_optimizer(lr=1e40, clip=0.0)
  state = st.TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0),
                        generator=st.init_trainee(params, tx))
  new, m = st.guarded_generator_step(state, lambda p: (jnp.sum(p["w"] ** 2), {}), tx, "loss")
  assert np.isfinite(m["loss"]) and np.isfinite(m["grad_norm/generator"])
  assert not bool(m["finite"])
  np.testing.assert_array_equal(new.generator.params["w"], params["w"])
  assert int(new.step) == 1
  # A sane learning rate is kept.
  tx = st.make_optimizer(lr=1e-2, clip=0.0)
  state = state.replace(generator=st.init_trainee(params, tx))
  new, m = st.guarded_generator_step(state, lambda p: (jnp.sum(p["w"] ** 2), {}), tx, "loss")
  assert bool(m["finite"]) and not np.array_equal(new.generator.params["w"], params["w"])


def test_nonfinite_abort_before_any_checkpoint_says_so(tmp_path):
  settings = loop.LoopSettings(workdir=str(tmp_path), total_steps=10, checkpoint_every=3,
                               max_consecutive_nonfinite=2, async_checkpoints=False)
  manager = loop.checkpoint_manager(str(tmp_path), async_save=False)
  step = jax.jit(lambda s, b: (s + b, {"finite": jnp.array(False), "loss": jnp.array(jnp.nan)}))
  with pytest.raises(loop.NonFiniteError) as e:
    loop.run(settings, state=jnp.zeros(()), start_step=0, step_fn_for=lambda s: step,
             batch_for=lambda s: jnp.ones(()), manager=manager)
  assert "(1..2)" in str(e.value) and "No checkpoint was written" in str(e.value)   # updates 1 and 2
  assert "None" not in str(e.value)
  assert manager.latest_step() is None


# ------------------------------------------------------------------------------------------------ export

def test_export_names_missing_step_and_creates_nothing(tmp_path):
  w = str(tmp_path / "run")
  manager = loop.checkpoint_manager(w, async_save=False)
  for s in (2, 4):
    loop.save(manager, s, {"generator": {"params": {"x": np.full((3,), float(s), np.float32)}}})
  manager.wait_until_finished()
  manager.close()
  with pytest.raises(UsageError, match="no checkpoint of step 3; saved steps: 2, 4"):
    export.restore_trained(w, step=3)
  step, state = export.restore_trained(w)
  assert step == 4 and float(state["generator"]["params"]["x"][0]) == 4.0
  missing = str(tmp_path / "never_trained")
  with pytest.raises(UsageError, match="train first"):
    export.restore_trained(missing)
  assert not os.path.exists(missing)


# ------------------------------------------------------------------------------------------------ weights

def test_checkpoint_preset_mismatch_names_the_fields_and_the_matching_preset(tmp_path):
  """A converted DiT whose config is another preset's: one line naming the differing fields and the preset the
  checkpoint matches (formerly both whole configs were printed)."""
  import json
  from configs import train_common
  from train.models import build_dit
  from wanjax.dit.config import get_config
  from wanjax.errors import CheckpointError

  (tmp_path / "config.json").write_text(json.dumps(dict(get_config("tiny").to_json_dict(), family="dit")))
  mcfg = train_common.model("tiny_i2v", weights=str(tmp_path))
  with pytest.raises(CheckpointError) as e:
    build_dit(mcfg, seed=0, mesh=shd.make_mesh("data=1"))
  msg = str(e.value)
  assert "\n" not in msg and "DiTConfig(" not in msg
  assert "differs from preset 'tiny_i2v' in model_type 't2v' (preset: 'i2v')" in msg
  assert msg.endswith("it matches preset 'tiny' (--config.models.<role>.preset=NAME)")


def test_a_config_for_another_trainer_names_the_right_one(tmp_path):
  """train.distill with a flow-matching config, and train.flow_matching with a DMD one, name the trainer that
  runs that objective (one line, exit 2), before any model is built."""
  from configs.train import dmd_bidirectional, flow_matching as fm_config
  from train import distill, flow_matching
  from wanjax.errors import UsageError
  with pytest.raises(UsageError, match=r"objective='flow_matching' is trained by python -m train.flow_matching"):
    distill.train(fm_config.get_config("smoke=True"), str(tmp_path / "a"))
  with pytest.raises(UsageError, match=r"objective='dmd' is trained by python -m train.distill"):
    flow_matching.train(dmd_bidirectional.get_config("smoke=True"), str(tmp_path / "b"))


def test_a_refused_config_leaves_no_empty_workdir(tmp_path):
  """A usage error the trainer finds after creating --workdir (here a bad mesh) removes the folder it created;
  a folder that existed before is kept."""
  new = tmp_path / "runs" / "new"
  line = _one_error_line(_cli("--config=configs/train/flow_matching.py:smoke=True", f"--workdir={new}",
                              "--config.mesh=bogus=2"))
  assert "--config.mesh='bogus=2'" in line and "unknown mesh axes ['bogus']" in line and not new.exists()
  old = tmp_path / "old"
  old.mkdir()
  _one_error_line(_cli("--config=configs/train/flow_matching.py:smoke=True", f"--workdir={old}",
                       "--config.mesh=bogus=2"))
  assert old.is_dir()
