"""Resuming a training run from its orbax checkpoints (train/loop.py), on tiny states: half-written and unreadable
checkpoints, a changed config, `total_steps` raised or lowered, the progress bar, TensorBoard after a resume, and
write failures (unwritable workdir, full disk). The real-trainer SIGKILL runs are in test_resume_kill.py (slow)."""

import glob
import logging
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import loop
from wanjax.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPL = jax.sharding.SingleDeviceSharding(jax.devices()[0])


# ------------------------------------------------------------------------------------------------ helpers

def _state(width=3, step=0):
  return {"step": jnp.asarray(step, jnp.int32), "generator": {"params": {"w": jnp.ones((2, width), jnp.float32)}}}


@jax.jit
def _update(state, batch):
  w = state["generator"]["params"]["w"] * 0.5 + batch
  new = {"step": state["step"] + 1, "generator": {"params": {"w": w}}}
  return new, {"finite": jnp.isfinite(jnp.sum(w)), "loss/x": jnp.sum(w)}


def _batch(step):
  return jnp.full((), float(step), jnp.float32)


def _settings(tmp_path, total_steps, *, config=None, checkpoint_every=3, log_every=1):
  return loop.LoopSettings(workdir=str(tmp_path), total_steps=total_steps, checkpoint_every=checkpoint_every,
                           log_every=log_every, keep_checkpoints=10, async_checkpoints=False, config=config)


def _resume(tmp_path, total_steps, *, width=3, config=None, step_fn=_update, **kw):
  """Restores (or creates) and runs the loop as a trainer does; returns (state, resumed step)."""
  manager = loop.checkpoint_manager(str(tmp_path), keep=10, async_save=False)
  abstract = jax.eval_shape(lambda: _state(width))
  state, resumed = loop.restore_or_create(manager, abstract_state=abstract,
                                          shardings=jax.tree.map(lambda _: REPL, abstract),
                                          create=lambda: _state(width), config=config)
  try:
    state = loop.run(_settings(tmp_path, total_steps, config=config, **kw), state=state,
                     start_step=resumed or 0, step_fn_for=lambda s: step_fn, batch_for=_batch, manager=manager)
  finally:
    manager.close()
  return state, resumed


def _steps(tmp_path):
  return loop.complete_steps(loop.checkpoint_dir(str(tmp_path)))


@pytest.fixture
def warnings_seen(caplog):
  caplog.set_level(logging.INFO)
  return lambda: "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# ------------------------------------------------------------------------------------------------ checkpoints

def test_half_written_checkpoint_is_skipped_with_a_log_line(tmp_path, warnings_seen):
  _resume(tmp_path, 6)
  ckpt = loop.checkpoint_dir(str(tmp_path))
  half = os.path.join(ckpt, "9" + loop.TMP_MARK)          # what a SIGKILL in the middle of a save leaves
  os.makedirs(os.path.join(half, "default"))
  open(os.path.join(half, "default", "partial"), "wb").write(b"\0" * 100)
  state, resumed = _resume(tmp_path, 9)
  assert resumed == 6 and int(state["step"]) == 9
  assert f"skipping half-written checkpoint 9{loop.TMP_MARK} in {ckpt}" in warnings_seen()
  assert "the last complete checkpoint is step 6" in warnings_seen()
  assert sorted(os.listdir(ckpt)) == ["3", "6", "9"]      # removed, and step 9 written again in full


def test_unreadable_checkpoint_falls_back_to_the_one_before(tmp_path, warnings_seen):
  ref, _ = _resume(tmp_path / "ref", 9)
  _resume(tmp_path / "run", 6)
  data = glob.glob(os.path.join(loop.checkpoint_dir(str(tmp_path / "run")), "6", "default", "**", "d", "*"),
                   recursive=True)
  assert data
  for f in data:
    open(f, "r+b").truncate(5)                              # a complete-looking step whose data is cut short
  state, resumed = _resume(tmp_path / "run", 9)
  assert resumed == 3
  assert "checkpoint step 6 in" in warnings_seen() and "is unreadable" in warnings_seen()
  ckpt = loop.checkpoint_dir(str(tmp_path / "run"))
  assert sorted(os.listdir(ckpt)) == ["3", "6", "6.unreadable", "9"]   # set aside; step 6 saved again
  np.testing.assert_array_equal(state["generator"]["params"]["w"], ref["generator"]["params"]["w"])


def test_changed_width_is_one_line_naming_the_array_and_the_config_change(tmp_path):
  _resume(tmp_path, 3, config={"model": {"width": 3}, "lr": 0.1})
  with pytest.raises(UsageError) as e:
    _resume(tmp_path, 6, width=5, config={"model": {"width": 5}, "lr": 0.1})
  msg = str(e.value)
  assert "\n" not in msg
  assert "checkpoint step 3" in msg and "generator.params.w: (2, 3) in the checkpoint, (2, 5) here" in msg
  assert "Config changes since that checkpoint: model.width: 3 -> 5" in msg
  assert _steps(tmp_path) == [3]


def test_changed_learning_rate_is_reported_and_used(tmp_path, warnings_seen):
  _resume(tmp_path, 3, config={"generator": {"lr": 0.001}, "total_steps": 3})
  _, resumed = _resume(tmp_path, 6, config={"generator": {"lr": 0.002}, "total_steps": 6})
  assert resumed == 3
  seen = warnings_seen()
  assert "with a config that differs from the one that wrote it: generator.lr: 0.001 -> 0.002" in seen
  assert "total_steps" not in seen      # a raised total_steps is the expected change: info, not a warning


def test_state_structure_change_is_named(tmp_path):
  _resume(tmp_path, 3)
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32),
              "generator": {"params": {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)},
                            "ema": {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)}}}
  manager = loop.checkpoint_manager(str(tmp_path), async_save=False)
  with pytest.raises(UsageError, match=r"generator\.ema\.w: in this config's state, not in the checkpoint"):
    loop.restore_or_create(manager, abstract_state=abstract, shardings=jax.tree.map(lambda _: REPL, abstract),
                           create=None)
  manager.close()


# ------------------------------------------------------------------------------------------------ total_steps

def test_total_steps_raised_continues_and_lowered_says_so(tmp_path, warnings_seen):
  ref, _ = _resume(tmp_path / "ref", 9)
  _resume(tmp_path / "run", 6)
  state, resumed = _resume(tmp_path / "run", 9)              # raised: trains on from 6 to 9
  assert resumed == 6 and int(state["step"]) == 9 and _steps(tmp_path / "run") == [3, 6, 9]
  np.testing.assert_array_equal(state["generator"]["params"]["w"], ref["generator"]["params"]["w"])
  # Lowered below the checkpoint: nothing trained, nothing written, and a warning that says what to do (a rerun
  # of a finished run, or of an earlier phase of a schedule such as scripts/train_toyworld.py's, stays a no-op).
  tb = sorted(os.listdir(tmp_path / "run" / "tb"))
  state, resumed = _resume(tmp_path / "run", 4)
  assert resumed == 9 and int(state["step"]) == 9 and _steps(tmp_path / "run") == [3, 6, 9]
  assert "checkpoint step 9 in" in warnings_seen()
  assert "is past total_steps=4: nothing to train. Raise --config.total_steps above 9 to train on" in warnings_seen()
  assert sorted(os.listdir(tmp_path / "run" / "tb")) == tb   # no empty event file either
  state, resumed = _resume(tmp_path / "run", 9)              # equal: nothing left, no warning
  assert resumed == 9 and int(state["step"]) == 9 and warnings_seen().count("nothing to train") == 1


def test_progress_bar_starts_at_the_resumed_step(tmp_path, capsys):
  _resume(tmp_path, 6)
  capsys.readouterr()
  _resume(tmp_path, 10)
  positions = [int(n) for n in re.findall(r"\| *(\d+)/10 ", capsys.readouterr().err)]
  assert positions[0] == 6 and positions[-1] == 10 and min(positions) == 6, positions


# ------------------------------------------------------------------------------------------------ TensorBoard

def read_events(tb_dir):
  """[(file, step, kind, tag, value)] of every event, files in name order (the order TensorBoard reads)."""
  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
    raw, pos = open(path, "rb").read(), 0
    while pos + 12 <= len(raw):
      n = int.from_bytes(raw[pos:pos + 8], "little")
      ev = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
      pos += 16 + n
      if ev.HasField("session_log"):
        out.append((path, ev.step, "start", None, None))
      for v in ev.summary.value:
        out.append((path, ev.step, "scalar", v.tag, v.simple_value))
  return out


def tensorboard_view(events):
  """{tag: [(step, value)]} as TensorBoard shows it after restarts: a SessionLog.START at step s drops every
  value at steps >= s read before it (the Python loader); a repeated or lower step drops the later ones too
  (the Rust data server's preemption)."""
  series = {}
  for _, step, kind, tag, value in events:
    if kind == "start":
      series = {t: [p for p in pts if p[0] < step] for t, pts in series.items()}
    else:
      pts = [p for p in series.get(tag, []) if p[0] < step]
      series[tag] = pts + [(step, value)]
  return series


def test_tensorboard_after_a_resume_has_each_step_once(tmp_path):
  ref, _ = _resume(tmp_path / "ref", 9)
  calls = []

  def dies_at_5(state, batch):      # a run killed after logging steps 4 and 5 (checkpoint 3 is the latest)
    if len(calls) == 5:
      raise KeyboardInterrupt
    calls.append(1)
    return _update(state, batch)

  with pytest.raises(KeyboardInterrupt):
    _resume(tmp_path / "run", 9, step_fn=dies_at_5)
  assert _steps(tmp_path / "run") == [3]
  _resume(tmp_path / "run", 9)
  events = read_events(str(tmp_path / "run" / "tb"))
  files = sorted({e[0] for e in events})
  assert len(files) == 2                                       # one event file per run, the resumed one last
  starts = [e for e in events if e[2] == "start"]
  assert [(e[0], e[1]) for e in starts] == [(files[1], 4)]     # purge point: the first step the resume redoes
  first = [e[1] for e in events if e[0] == files[0] and e[3] == "loss/x"]
  assert first == [1, 2, 3, 4, 5]                              # the killed run's values after step 3 ...
  view = tensorboard_view(events)
  want = tensorboard_view(read_events(str(tmp_path / "ref" / "tb")))
  assert [s for s, _ in view["loss/x"]] == list(range(1, 10))   # ... are replaced: each step once, in order
  assert view["loss/x"] == want["loss/x"]


def test_nonfinite_count_carries_over_a_resume(tmp_path):
  @jax.jit
  def skip_at_2(state, batch):     # update 2 counts as non-finite (the loop only counts; the state is kept)
    new, m = _update(state, batch)
    return new, dict(m, finite=m["finite"] & (state["step"] != 1))

  _resume(tmp_path, 3, step_fn=skip_at_2)
  _resume(tmp_path, 6)
  view = tensorboard_view(read_events(str(tmp_path / "tb")))
  assert view["nonfinite/skipped_total"] == [(s, 1.0 if s >= 2 else 0.0) for s in range(1, 7)]


# ------------------------------------------------------------------------------------------------ write failures

def test_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(loop.WorkdirError, match=r"--workdir=.*a_file/run is not writable: Not a directory"):
    loop.checkpoint_manager(str(blocker / "run"))
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  r = subprocess.run([sys.executable, "-m", "train.flow_matching",
                      "--config=configs/train/flow_matching.py:smoke=True", f"--workdir={blocker}/run"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]   # the --workdir given is at fault
  assert r.stderr.strip().splitlines()[-1] == f"error: --workdir={blocker}/run is not writable: Not a directory"


def test_write_failure_reads_tensorstore_and_os_errors():
  assert loop.write_failure(OSError(28, "No space left on device")) == os.strerror(28)
  ts = ValueError("OUT_OF_RANGE: Error writing local file \"/w/checkpoints/3.orbax-checkpoint-tmp/d/x\": "
                  "Failed to write 367902 bytes to file 7: No space left on device [os_error_code='28']")
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = ts
  assert loop.write_failure(wrapped) == os.strerror(28)
  assert loop.write_failure(ValueError("Requested shape: (4, 5) is not compatible")) is None


FULL_DISK_SCRIPT = """
import resource, signal, sys
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp
from train import loop

def train(c, workdir):
  settings = loop.LoopSettings(workdir=workdir, total_steps=6, checkpoint_every=3, log_every=1,
                               async_checkpoints={asyn})
  manager = loop.checkpoint_manager(workdir, async_save={asyn})
  state = {{"w": jax.random.normal(jax.random.PRNGKey(0), (200_000,))}}   # 800 kB: over the size limit below
  step = jax.jit(lambda s, b: ({{"w": s["w"] * 0.5 + b}}, {{"finite": jnp.array(True), "loss": jnp.sum(s["w"])}}))
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))    # writes past 100 kB fail: a full disk
  loop.run(settings, state=state, start_step=0, step_fn_for=lambda s: step, batch_for=lambda s: jnp.ones(()),
           manager=manager)

loop.run_cli(train, "x")
"""


@pytest.mark.parametrize("asyn", [False, True], ids=["sync", "async"])
def test_full_disk_is_one_last_line(tmp_path, asyn):
  script = tmp_path / "full_disk.py"
  script.write_text(textwrap.dedent(FULL_DISK_SCRIPT.format(root=ROOT, asyn=asyn)))
  w = tmp_path / "run"
  r = subprocess.run([sys.executable, str(script), "--config=configs/train/flow_matching.py:smoke=True",
                      f"--workdir={w}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 1   # the run failed (not the user's input)
  last = r.stderr.strip().splitlines()[-1]
  what = "checkpoints" if asyn else "checkpoint step 3"
  assert last == (f"error: cannot write {what} in {w}: File too large. Free space (or fix the folder) and rerun "
                  f"the same command: it resumes from the start (no complete checkpoint yet)"), r.stderr[-3000:]
  assert _steps(w) == []


# ------------------------------------------------------------------------------------------------ make_ode_pairs

def test_ode_pairs_full_disk_is_one_line_and_the_rerun_starts_at_the_done_samples(tmp_path, monkeypatch):
  import errno
  from configs.train import ode_init
  from train import make_ode_pairs as mop
  c = ode_init.get_config("smoke=True")
  out = str(tmp_path / "pairs")
  real_save = mop.checkpoint.save_tensors

  def disk_fills_after_one_shard(path, tensors, metadata=None):
    if os.path.basename(path) != "shard-00000.safetensors":
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return real_save(path, tensors, metadata)

  monkeypatch.setattr(mop.checkpoint, "save_tensors", disk_fills_after_one_shard)
  with pytest.raises(loop.WorkdirError) as e:
    mop.run(c, out, num_steps=8, samples_per_shard=2, num_samples=4)
  assert str(e.value) == (f"--output={out}: cannot write shard-00001.safetensors: No space left on device. Free "
                          f"space and rerun the same command: it keeps the 1 finished shard(s)")
  monkeypatch.setattr(mop.checkpoint, "save_tensors", real_save)
  bars = []

  class Bar:
    def __init__(self, **kw):
      bars.append(kw)

    def update(self, n):
      bars.append(n)

    def close(self):
      pass

  import tqdm
  monkeypatch.setattr(tqdm, "tqdm", Bar)
  assert mop.run(c, out, num_steps=8, samples_per_shard=2, num_samples=4)["shards_written"] == 1
  assert bars[0]["total"] == 4 and bars[0]["initial"] == 2 and sum(bars[1:]) == 2   # resumed at sample 2 of 4
