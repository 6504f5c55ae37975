"""THE training loop every trainer uses: checkpoint/resume (`train/checkpoints.py`), non-finite policy, logging,
progress.

Mirrors the scaffolding of Self-Forcing's `trainer/distillation.py` (step counter, periodic checkpoints) in the
big_vision `train.py` shape: the state is born sharded (`jit(create, out_shardings=…)`) or restored straight into
the abstract sharded state, steps are jitted pure functions with donated state, step RNG is
`fold_in(rng, step)` inside the step (bitwise resume), and the step loop runs under
`jax.transfer_guard("disallow")` so data moves only by explicit `device_put`/`device_get`.

Trainers supply: the abstract state and its shardings, a `create()` thunk for a fresh state, `step_fn_for(step)`
(a jitted `(state, batch) -> (state, metrics)`; metrics hold scalars and a boolean `finite`), and
`batch_for(step)` (a device batch, deterministic in the step).
"""

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging

from train.checkpoints import (TMP_MARK, WorkdirError, WriteFailedError, abstract_sharded,  # noqa: F401
                               check_writable, checkpoint_dir, checkpoint_manager, complete_steps, first_line,
                               restore_or_create, save, saved_metadata, write_error, write_failure)
from wanjax.errors import UsageError, out_of_memory_message


class NonFiniteError(RuntimeError):
  """Raised after too many consecutive non-finite steps."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  workdir: str
  total_steps: int
  checkpoint_every: int = 50
  keep_checkpoints: int = 3
  log_every: int = 10
  max_consecutive_nonfinite: int = 5
  samples_per_step: int = 1          # for the throughput scalar
  learning_rates: tuple = ()         # ((name, lr), ...) logged as constants
  sleep_per_step: float = 0.0        # debug only: widens the window of the kill/resume test
  async_checkpoints: bool = True
  max_seconds: float = 0.0           # > 0: stop (and save) at the first step end past this wall time
  config: Any = None                 # the run's config as JSON data: recorded in every checkpoint's metadata

  def __post_init__(self):
    if not self.workdir:
      raise UsageError("--workdir is required (checkpoints and TensorBoard logs are written there)")
    for name in ("total_steps", "checkpoint_every", "keep_checkpoints", "log_every",
                 "max_consecutive_nonfinite"):
      if getattr(self, name) < 1:
        raise UsageError(f"{name}={getattr(self, name)} must be >= 1")
    if self.max_seconds < 0:
      raise UsageError(f"max_train_seconds={self.max_seconds} must be >= 0 (0 = no wall-clock limit)")


# ------------------------------------------------------------------------------------------------ the loop

def _writer(workdir, start_step):
  """The chief's TensorBoard writer: a new event file per run (named by the start time in ns, so a resumed run's
  file sorts after the killed one's). A resumed run first writes a `SessionLog.START` at `start_step + 1`:
  TensorBoard then drops the killed run's values after the checkpoint (the resumed run logs those steps again);
  the values up to the checkpoint step stay. The Rust data server drops them anyway (a repeated step preempts
  the later ones), the Python loader (`--load_fast=false`, EventAccumulator) only with this event."""
  if jax.process_index() != 0:
    return None
  import tensorboardX  # deferred: only the chief process writes event files
  return tensorboardX.SummaryWriter(os.path.join(os.path.abspath(workdir), "tb"),
                                    filename_suffix=f".{time.time_ns()}",
                                    purge_step=start_step + 1 if start_step else None)


def _close_quietly(writer):
  try:
    writer.close()
  except OSError:   # a full disk: the error was raised where the write failed
    pass


def run(settings: LoopSettings, *, state, start_step, step_fn_for, batch_for, manager, on_save=None):
  """Runs steps [start_step, total_steps). Returns the final state (also saved as the last checkpoint).
  `on_save(step, state)`, if given, runs after each checkpoint save (e.g. to export a LoRA beside it).

  Resume: from a `start_step` at or past `total_steps` nothing is trained (past it, a warning says to raise
  `--config.total_steps`; a rerun of a finished run, or of one phase of a longer schedule, stays a no-op). The
  progress bar starts at `start_step`; the count of skipped non-finite steps carries over through the
  checkpoint metadata, which also records `settings.config`.

  Non-finite policy: a step whose loss, gradient or updated params are not finite is skipped inside the step
  function (the params and optimiser state stay; step and RNG advance) and counted here; after
  `max_consecutive_nonfinite` in a row this raises `NonFiniteError` without saving, so the last good
  checkpoint stays the latest. No checkpoint is written while a non-finite streak is running.

  Wall-clock budget: with `max_seconds > 0` the loop stops after the first step that ends past that many
  seconds (counted from entry, so the first step's compile counts too) and saves that step, so a budgeted run
  ends like a finished one and `train.export` picks it up. A resume continues towards `total_steps`.

  A write that fails for lack of space or permissions (checkpoint or event file) is one `WriteFailedError` line.
  """
  if start_step >= settings.total_steps:   # a finished run rerun, or total_steps lowered: nothing to train
    past = start_step > settings.total_steps
    (logging.warning if past else logging.info)(
        "checkpoint step %d in %s %s total_steps=%d: nothing to train. Raise --config.total_steps above %d to "
        "train on%s", start_step, manager.directory, "is past" if past else "reached", settings.total_steps,
        start_step, "; train.export --step N exports an earlier kept checkpoint" if past else "")
    return state
  skipped_total = int(saved_metadata(manager, start_step).get("nonfinite_skipped_total", 0)) if start_step else 0
  try:
    writer = _writer(settings.workdir, start_step)
  except OSError as e:
    raise write_error(e, "the TensorBoard log", manager) or e from None
  streak = 0
  pbar = tqdm.tqdm(total=settings.total_steps, initial=start_step, desc="train", unit="step",
                   disable=jax.process_index() != 0)
  t_last = t_start = time.perf_counter()
  finished = False
  try:
    for step in range(start_step, settings.total_steps):
      batch = batch_for(step)
      with jax.transfer_guard("disallow"):
        state, metrics = step_fn_for(step)(state, batch)
      metrics = jax.device_get(metrics)
      jax.block_until_ready(state)
      now = time.perf_counter()
      dt, t_last = now - t_last, now
      done = step + 1
      if bool(metrics.pop("finite")):
        streak = 0
      else:
        streak += 1
        skipped_total += 1
        # Steps are numbered as checkpoints and TensorBoard count them: step n is the n-th update (1-based).
        logging.warning("step %d: non-finite loss, gradient or updated params; update skipped (%d in a row, "
                        "%d total)", done, streak, skipped_total)
        if streak >= settings.max_consecutive_nonfinite:
          manager.wait_until_finished()
          latest = manager.latest_step()
          last = (f"Last good checkpoint: step {latest} in {manager.directory}; lower the learning rate or "
                  f"check the data, then resume from that checkpoint." if latest is not None else
                  f"No checkpoint was written (none in {manager.directory}); lower the learning rate or check "
                  f"the data, then start again.")
          raise NonFiniteError(
              f"{streak} consecutive non-finite steps ({done - streak + 1}..{done}); stopped without saving. "
              + last)
      if writer is not None and (done % settings.log_every == 0 or done == settings.total_steps):
        for k, v in metrics.items():
          writer.add_scalar(k, float(np.asarray(v)), done)
        for name, lr in settings.learning_rates:
          writer.add_scalar(f"lr/{name}", lr, done)
        writer.add_scalar("perf/step_time_s", dt, done)
        writer.add_scalar("perf/samples_per_s", settings.samples_per_step / max(dt, 1e-9), done)
        writer.add_scalar("nonfinite/skipped_total", skipped_total, done)
        try:
          writer.flush()
        except OSError as e:
          raise write_error(e, "the TensorBoard log", manager) or e from None
      pbar.update(1)
      pbar.set_postfix({k: f"{float(np.asarray(v)):.4g}" for k, v in metrics.items() if k.startswith("loss")})
      out_of_time = settings.max_seconds > 0 and now - t_start >= settings.max_seconds
      if streak == 0 and (done % settings.checkpoint_every == 0 or done == settings.total_steps or out_of_time):
        try:
          save(manager, done, state, {"config": settings.config, "nonfinite_skipped_total": skipped_total})
        except Exception as e:   # noqa: BLE001  (an async save reports the previous save's failure here)
          what = "checkpoints" if settings.async_checkpoints else f"checkpoint step {done}"
          raise write_error(e, what, manager) or e from None
        if on_save is not None:
          on_save(done, state)
      if settings.sleep_per_step:
        time.sleep(settings.sleep_per_step)
      if out_of_time and streak == 0:
        logging.info("stopped at step %d of %d: max_train_seconds=%g reached", done, settings.total_steps,
                     settings.max_seconds)
        if writer is not None:
          writer.add_scalar("perf/stopped_by_time_limit", 1.0, done)
        break
    finished = True
  finally:
    pbar.close()
    try:
      manager.wait_until_finished()
    except Exception as e:   # noqa: BLE001
      err = write_error(e, "checkpoints", manager)
      if finished:   # nothing else is being raised: this failure is the error
        raise err or e from None
      logging.warning("the last checkpoint save failed too: %s", first_line(err or e))
    if writer is not None:
      _close_quietly(writer)
  if skipped_total:
    logging.warning("%d steps were skipped as non-finite", skipped_total)
  return state


def train(c, workdir, *, abstract_state, shardings, create, step_fn_for, batch_for, mesh, rules, lrs,
          on_save=None, what="generator params"):
  """The trainers' driver: restores the newest checkpoint of `workdir` (or `create()`s the state), checking it
  against this run's config, runs the shared loop to `c.total_steps`, and returns the final state.
  `on_save(step, state)` runs after each checkpoint; `what` words the log line's parameter count."""
  from wanjax import sharding as shd
  from train import state as st
  settings = settings_from_config(c, workdir, samples_per_step=c.data.batch_size, learning_rates=lrs)
  manager = checkpoint_manager(workdir, keep=c.keep_checkpoints, async_save=c.async_checkpoints)
  with shd.activate(mesh, rules):
    state, resumed = restore_or_create(manager, abstract_state=abstract_state, shardings=shardings,
                                       create=create, config=settings.config)
    logging.info("%s: %d; starting at step %d of %d", what, st.param_count(state.generator.params),
                 resumed or 0, c.total_steps)
    state = run(settings, state=state, start_step=resumed or 0, step_fn_for=step_fn_for,
                batch_for=batch_for, manager=manager, on_save=on_save)
  manager.close()
  return state


def settings_from_config(c, workdir, *, samples_per_step, learning_rates=()) -> LoopSettings:
  """LoopSettings from the cadence section of a training config (CLIs only)."""
  return LoopSettings(workdir=workdir, total_steps=c.total_steps, checkpoint_every=c.checkpoint_every,
                      keep_checkpoints=c.keep_checkpoints, log_every=c.log_every,
                      max_consecutive_nonfinite=c.max_consecutive_nonfinite, samples_per_step=samples_per_step,
                      learning_rates=tuple(learning_rates), sleep_per_step=c.debug.sleep_per_step,
                      async_checkpoints=c.async_checkpoints, max_seconds=c.get("max_train_seconds", 0.0),
                      config=config_json(c))


def config_json(c):
  """A ConfigDict as JSON data (nested dicts, lists; non-JSON values as their repr)."""
  return json.loads(c.to_json_best_effort(sort_keys=True))


def poison(loss, step, steps):
  """Debug hook: NaN loss at the given steps (exercises the non-finite policy end to end)."""
  import jax.numpy as jnp
  bad = jnp.isin(step, jnp.asarray(steps, jnp.int32))
  return jnp.where(bad, jnp.nan, loss)


# ------------------------------------------------------------------------------------------------ CLI

def _resume_hint(workdir) -> str:
  steps = complete_steps(checkpoint_dir(workdir)) if workdir else []
  return (f"the last checkpoint is step {steps[-1]} in {checkpoint_dir(workdir)}; rerun the same command to "
          f"resume from it" if steps else "no checkpoint was written yet; rerun the same command to start again")


def interrupted_message(workdir) -> str:
  """The one line a trainer prints on Ctrl-C (`run` has already waited for the saves in flight)."""
  return f"interrupted: {_resume_hint(workdir)}"


OOM_ADVICE = ("On one GPU let JAX hold more of its memory (XLA_PYTHON_CLIENT_MEM_FRACTION=0.98; the default is "
              "0.75, and XLA_PYTHON_CLIENT_PREALLOCATE=false fragments it: the 1.3B DMD step needs 69.6 GiB of an "
              "80 GB H100). Lower --config.data.batch_size, keep --config.models.<role>.remat=full, run on more "
              "devices (the mesh, --config.mesh, shards the state over them), or for DMD hold the whole frozen "
              "teacher in bf16 (--config.dmd.teacher_param_dtype=bfloat16).")


def out_of_memory_line(e, workdir):
  """The one line a trainer prints when the device runs out of memory, or None for other errors."""
  msg = out_of_memory_message(e, OOM_ADVICE)
  if msg is None:
    return None
  hint = _resume_hint(workdir)
  return f"error: {msg} {hint[0].upper()}{hint[1:]}."


def exit_now(message, code=1):
  """Prints `message` and exits at once, so it stays the last line: after a failed write, tensorstore's leftover
  callbacks print 'Event loop is closed' tracebacks during a normal interpreter shutdown (`run` has already
  waited for the saves and closed the event file)."""
  import sys
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(code)


def remove_if_empty(folder):
  """Removes `folder` if it holds nothing (a run that stopped before writing anything there)."""
  try:
    if not os.listdir(folder):
      os.rmdir(folder)
  except OSError:
    pass


def run_cli(train_fn, example_config):
  """The absl entry point every trainer shares: `--config FILE[:args]` (locked ml-collections config, so a
  mistyped `--config.x` fails) and `--workdir DIR` (checkpoints, TensorBoard; resumed automatically). Calls
  `train_fn(config, workdir)`. Errors are one line; the exit code says whose fault (`infer/cli.py`): 2 for the
  user's input (flags, config, an unwritable --workdir), 1 for a failed run (non-finite abort, out of memory, a
  write that failed mid-run), 130 for Ctrl-C."""
  import sys
  from absl import app, flags
  from ml_collections import config_flags
  from infer import cli
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Checkpoints and TensorBoard logs go here; resumes from it.")
  for name in ("config", "workdir"):   # defined here, not in __main__: list them under --help as well
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

  def main(argv):
    if len(argv) > 1:
      cli.fail(f"unexpected arguments {argv[1:]}; settings go through --config.<field>=...")
    created = False
    try:
      if flags.FLAGS.config is None:
        raise UsageError(f"--config is required, e.g. --config {example_config}")
      if not flags.FLAGS.workdir:   # before any model or data is built (the prompt cache lives in it)
        raise UsageError("--workdir is required (checkpoints and TensorBoard logs are written there)")
      created = not os.path.exists(flags.FLAGS.workdir)
      check_writable(flags.FLAGS.workdir)
      train_fn(flags.FLAGS.config, flags.FLAGS.workdir)
    except WriteFailedError as e:   # full disk, ... during the run
      exit_now(f"error: {e}")
    except WorkdirError as e:   # the --workdir given cannot be written
      exit_now(f"error: {e}", cli.USAGE_EXIT)
    except UsageError as e:
      if created:   # a config the run refused leaves no empty --workdir behind
        remove_if_empty(flags.FLAGS.workdir)
      cli.fail(e)
    except NonFiniteError as e:
      cli.fail(e, exit_code=1)
    except KeyboardInterrupt:
      exit_now(interrupted_message(flags.FLAGS.workdir), 130)
    except Exception as e:   # noqa: BLE001  (an out-of-memory is one line; anything else keeps its traceback)
      line = out_of_memory_line(e, flags.FLAGS.workdir)
      if line is None:
        raise
      exit_now(line)

  # Config typos and unloadable config files: one line, exit 2 as the trainers' other usage errors.
  app.run(main, flags_parser=cli.flags_parser(what="config", hint="configs/train/<name>.py[:arg]"))
