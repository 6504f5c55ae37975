"""`max_train_seconds`: the loop stops at the first step end past the budget and saves that step."""

import time

import jax
import jax.numpy as jnp
import pytest

from train import loop
from wanjax.errors import UsageError

STEP_SLEEP_S = 0.05


def _run(tmp_path, *, max_seconds, total_steps=1000):
  settings = loop.LoopSettings(workdir=str(tmp_path), total_steps=total_steps, checkpoint_every=10_000,
                               log_every=1, async_checkpoints=False, max_seconds=max_seconds)
  manager = loop.checkpoint_manager(str(tmp_path), async_save=False)

  @jax.jit
  def update(state, batch):
    new = {"w": state["w"] + batch, "step": state["step"] + 1}
    return new, {"finite": jnp.array(True), "loss": jnp.zeros(())}

  def step(state, batch):
    time.sleep(STEP_SLEEP_S)
    return update(state, batch)

  t0 = time.perf_counter()
  one = jnp.ones(())
  state = loop.run(settings, state={"w": jnp.zeros(()), "step": jnp.zeros((), jnp.int32)}, start_step=0,
                   step_fn_for=lambda s: step, batch_for=lambda s: one, manager=manager)
  return state, manager, time.perf_counter() - t0


def test_budget_stops_early_and_saves_the_last_step(tmp_path):
  state, manager, wall = _run(tmp_path, max_seconds=0.5)
  done = int(state["step"])
  assert 2 <= done < 100, done                    # stopped long before total_steps=1000
  assert wall < 0.5 + 20 * STEP_SLEEP_S + 5.0     # within a step (plus one-off overheads) of the budget
  assert manager.latest_step() == done            # the step it stopped at is saved, as at a normal end
  assert float(state["w"]) == done


def test_no_budget_runs_to_the_end(tmp_path):
  state, manager, _ = _run(tmp_path, max_seconds=0.0, total_steps=5)
  assert int(state["step"]) == 5 and manager.latest_step() == 5


def test_negative_budget_is_a_usage_error(tmp_path):
  with pytest.raises(UsageError, match="max_train_seconds"):
    loop.LoopSettings(workdir=str(tmp_path), total_steps=5, max_seconds=-1.0)
