"""End-to-end DMD smoke runs of the real CLI: kill/resume bitwise equality and the non-finite policy."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "train", "dmd_smoke.py")


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "train.distill", f"--config={CONFIG}", f"--workdir={workdir}", *extra]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _restore(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "default"))


def _flat(tree):
  out = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}/{k}", v)
    elif isinstance(node, (list, tuple)):
      for i, v in enumerate(node):
        walk(f"{prefix}/{i}", v)
    elif node is not None:
      out[prefix] = np.asarray(node)
  walk("", tree)
  return out


@pytest.mark.slow
def test_kill_and_resume_is_bitwise(tmp_path):
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  subprocess.run(_cmd(ref), check=True, cwd=ROOT, env=_env(), capture_output=True, timeout=900)
  proc = subprocess.Popen(_cmd(killed, "--config.debug.sleep_per_step=1.0"), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 900
  while not _steps(killed) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  got = _steps(killed)
  assert got and got[-1] < 12, f"kill came too late or too early: checkpoints {got}"
  subprocess.run(_cmd(killed), check=True, cwd=ROOT, env=_env(), capture_output=True, timeout=900)
  assert _steps(ref)[-1] == _steps(killed)[-1] == 12
  a, b = _flat(_restore(ref, 12)), _flat(_restore(killed, 12))
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert any("ema" in k for k in a) and any("critic" in k for k in a)


@pytest.mark.slow
def test_nonfinite_steps_skipped_then_abort(tmp_path):
  # One poisoned step (index 5: the 6th update) is skipped and the run finishes; a streak of 3 from index 9 aborts.
  # Messages count updates as checkpoints do (1-based): steps 6 and 10..12.
  w = str(tmp_path / "nan")
  r = subprocess.run(_cmd(w, "--config.debug.nonfinite_steps=(5, 9, 10, 11)",
                          "--config.max_consecutive_nonfinite=3"),
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert r.returncode == 1
  assert "3 consecutive non-finite steps (10..12)" in r.stderr, r.stderr[-2000:]
  assert "step 6: non-finite" in r.stderr
  # Last good checkpoint is intact: step 8, finite everywhere; nothing after it was written.
  assert _steps(w)[-1] == 8
  state = _flat(_restore(w, 8))
  assert all(np.all(np.isfinite(v)) for v in state.values() if v.dtype.kind == "f")


@pytest.mark.slow
@pytest.mark.parametrize("module,config", [("train.flow_matching", "flow_matching.py:smoke=True"),
                                           ("train.distill", "ode_init.py:smoke=True")])
def test_single_trainee_smoke_runs(tmp_path, module, config):
  w = str(tmp_path / "run")
  cmd = [sys.executable, "-m", module, f"--config={os.path.join(ROOT, 'configs', 'train', config)}",
         f"--workdir={w}", "--config.total_steps=4"]
  subprocess.run(cmd, check=True, cwd=ROOT, env=_env(), capture_output=True, timeout=900)
  state = _flat(_restore(w, 4))
  assert int(state["/step"]) == 4
  assert all(np.all(np.isfinite(v)) for v in state.values() if v.dtype.kind == "f")


def test_unknown_config_arg_fails_cleanly(tmp_path):
  r = subprocess.run(_cmd(str(tmp_path / "x"), "--config.dmd.grid_lookupp=exact"), cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "grid_lookupp" in r.stderr
