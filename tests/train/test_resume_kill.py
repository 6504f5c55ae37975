"""SIGKILL in the middle of an orbax save, then the same command again, for every trainer (post-training included): the resumed run skips
the half-written checkpoint with a log line, ends bitwise equal to an uninterrupted run, and its TensorBoard
events show each step once. Also make_ode_pairs killed while writing a shard. Slow: each case runs a trainer
three times (~1-4 minutes each on two shared CPUs)."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_resume import read_events, tensorboard_view

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TMP = ".orbax-checkpoint-tmp"

CASES = {   # name: (module, config, extra flags, final step)
    "flow_matching": ("train.flow_matching", "toyworld_teacher.py:smoke=True", ["--config.data.random_contexts=8"], 6),
    "vae": ("train.vae", "toyworld_vae.py:smoke=True", ["--config.data.clips={clips}"], 6),
    "dmd_async": ("train.distill", "dmd_smoke.py", ["--config.async_checkpoints=True"], 12),
    "self_forcing": ("train.distill", "self_forcing.py:smoke=True", [], 6),
    "causvid": ("train.distill", "causvid_dmd.py:smoke=True", [], 6),
    "ode_init": ("train.distill", "ode_init.py:smoke=True", [], 12),
    # Post-training (one-trainee states with EMA / a LoRA exported beside each checkpoint): three saves.
    **{name: ("train.distill", f"{name}.py:smoke=True", ["--config.total_steps=6", "--config.checkpoint_every=2"], 6)
       for name in ("cfg_distill", "step_distill", "reward_lora")},
}


def _env():
  return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _names(folder):
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _flat(tree, prefix="", out=None):
  out = {} if out is None else out
  if isinstance(tree, dict):
    for k, v in tree.items():
      _flat(v, f"{prefix}/{k}", out)
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      _flat(v, f"{prefix}/{i}", out)
  elif tree is not None:
    out[prefix] = np.asarray(tree)
  return out


def _kill_when(cmd, ready):
  """Starts `cmd`, SIGKILLs it as soon as `ready()` holds (polled every millisecond); returns whether it did."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 900
  while proc.poll() is None and time.time() < deadline:
    if ready():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
    time.sleep(0.001)
  proc.kill()
  proc.wait()
  return False


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  from wanjax.toyworld import dataset
  d = tmp_path_factory.mktemp("clips")
  dataset.write_dataset(d, 2, seed=3, frames=5, size=32, fmt="npy")
  return str(d)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_kill_during_a_save_then_resume_is_bitwise(tmp_path, case, clips):
  module, config, extra, final = CASES[case]
  extra = [x.format(clips=clips) for x in extra]

  def cmd(w):
    return [sys.executable, "-m", module, f"--config={os.path.join(ROOT, 'configs', 'train', config)}",
            f"--workdir={w}", *extra]

  ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
  subprocess.run(cmd(ref), cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=900)
  ckpt = os.path.join(run, "checkpoints")
  # Killed while writing its second checkpoint: the first is complete, the second a tmp folder.
  killed = _kill_when(cmd(run), lambda: any(n.isdigit() for n in _names(ckpt)) and
                      any(TMP in n for n in _names(ckpt)))
  assert killed, f"the run ended before a second save was caught: {_names(ckpt)}"
  half = [n for n in _names(ckpt) if TMP in n]
  last = max(int(n) for n in _names(ckpt) if n.isdigit())
  r = subprocess.run(cmd(run), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"skipping half-written checkpoint {half[0]}" in r.stderr
  assert f"the last complete checkpoint is step {last}" in r.stderr and f"resumed from step {last}" in r.stderr
  assert not any(TMP in n for n in _names(ckpt))
  a = _flat(ocp.StandardCheckpointer().restore(os.path.join(ref, "checkpoints", str(final), "default")))
  b = _flat(ocp.StandardCheckpointer().restore(os.path.join(ckpt, str(final), "default")))
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # TensorBoard: every step once, in order, the losses equal to the uninterrupted run's.
  view, want = tensorboard_view(read_events(os.path.join(run, "tb"))), tensorboard_view(read_events(
      os.path.join(ref, "tb")))
  losses = [t for t in want if t.startswith("loss/")]
  assert losses
  for tag in losses:
    assert view[tag] == want[tag], tag
  assert len(glob.glob(os.path.join(run, "tb", "events.out.tfevents.*"))) == 2


@pytest.mark.slow
def test_make_ode_pairs_killed_while_writing_a_shard(tmp_path):
  def cmd(out):
    return [sys.executable, "-m", "train.make_ode_pairs",
            f"--config={os.path.join(ROOT, 'configs', 'train', 'ode_init.py')}:smoke=True", f"--output={out}",
            "--num_steps=8", "--samples_per_shard=1"]

  ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
  subprocess.run(cmd(ref), cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=900)
  # Killed while the second shard's temp file is being written (or right after it is published).
  killed = _kill_when(cmd(out), lambda: "shard-00000.safetensors" in _names(out) and
                      any(n.startswith(".") and n.endswith(".safetensors") for n in _names(out)))
  assert killed, _names(out)
  r = subprocess.run(cmd(out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  shards = [n for n in _names(ref) if n.endswith(".safetensors")]
  assert len(shards) == 4 and [n for n in _names(out) if n.endswith(".safetensors") and
                               not n.startswith(".")] == shards
  from safetensors.numpy import load_file
  for n in shards:
    a, b = load_file(os.path.join(ref, n)), load_file(os.path.join(out, n))
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"{n}:{k}")


@pytest.mark.slow
def test_ctrl_c_is_one_line_naming_the_checkpoint_to_resume_from(tmp_path):
  """Ctrl-C (SIGINT) during training: exit 130 and one last line saying which checkpoint a rerun resumes from
  (formerly a KeyboardInterrupt traceback)."""
  work = tmp_path / "run"
  cmd = [sys.executable, "-m", "train.flow_matching", "--config", os.path.join(ROOT, "configs/train/toyworld_teacher.py:smoke=True"),
         f"--workdir={work}", "--config.data.random_contexts=8", "--config.total_steps=1000",
         "--config.debug.sleep_per_step=0.05"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline and not any(n.isdigit() for n in _names(work / "checkpoints")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  steps = sorted(int(n) for n in _names(work / "checkpoints") if n.isdigit())
  last = err.strip().splitlines()[-1]
  assert proc.returncode == 130 and steps, err[-3000:]
  assert last == (f"interrupted: the last checkpoint is step {steps[-1]} in {work / 'checkpoints'}; rerun the same "
                  f"command to resume from it"), err[-3000:]
  assert "Traceback" not in err, err[-3000:]
