"""A trainer that meets a corrupt checkpoint skips it with one warning: orbax's failed metadata read leaves
tensorstore callbacks aimed at its closed event loop, which used to print 'Event loop is closed' tracebacks
(`train.checkpoints.drop_closed_loop_errors`)."""

import glob
import os
import subprocess
import sys

import jax.numpy as jnp

from train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The trainers' CLI (`loop.run_cli`) around the resume-and-run of a tiny state (as tests/train/test_resume.py). Its
# N arrays are read concurrently: with many, some are still being read when the first read fails.
N = 128
_TRAINER = """
import jax, jax.numpy as jnp
from train import loop
N = ARRAYS

def state():
  return {"step": jnp.zeros((), jnp.int32), "w": [jnp.ones((2, 3), jnp.float32)] * N}

def train_fn(config, workdir):
  manager = loop.checkpoint_manager(workdir, keep=10, async_save=False)
  abstract = jax.eval_shape(state)
  repl = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  st, resumed = loop.restore_or_create(manager, abstract_state=abstract, create=state,
                                       shardings=jax.tree.map(lambda _: repl, abstract))
  step = jax.jit(lambda s, b: ({"step": s["step"] + 1, "w": [w * 0.5 + b for w in s["w"]]},
                               {"finite": jnp.array(True)}))
  settings = loop.LoopSettings(workdir=workdir, total_steps=TOTAL, checkpoint_every=3, keep_checkpoints=10,
                               async_checkpoints=False)
  loop.run(settings, state=st, start_step=resumed or 0, step_fn_for=lambda s: step,
           batch_for=lambda s: jnp.ones(()), manager=manager)
  manager.close()
  print("resumed", resumed)

loop.run_cli(train_fn, "x")
"""


def _train(tmp_path, total):
  script = tmp_path / "trainer.py"
  script.write_text(_TRAINER.replace("TOTAL", str(total)).replace("ARRAYS", str(N)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, str(script), "--config=configs/train/flow_matching.py:smoke=True",
                         f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)


def test_corrupt_checkpoint_is_skipped_without_event_loop_tracebacks(tmp_path):
  w = str(tmp_path / "run")
  manager = loop.checkpoint_manager(w, keep=10, async_save=False)
  for s in (3, 6):
    loop.save(manager, s, {"step": jnp.asarray(s, jnp.int32), "w": [jnp.full((2, 3), float(s), jnp.float32)] * N})
  manager.wait_until_finished()
  manager.close()
  # Garbage in step 6's OCDBT b-tree: every array's metadata read fails, and orbax gathers them concurrently.
  nodes = glob.glob(os.path.join(loop.checkpoint_dir(w), "6", "default", "d", "*"))
  assert nodes
  for f in nodes:
    with open(f, "r+b") as fh:
      fh.write(b"\xa5" * os.path.getsize(f))
  r = _train(tmp_path, 9)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed 3" in r.stdout
  assert "checkpoint step 6 in" in r.stderr and "is unreadable" in r.stderr, r.stderr[-3000:]
  assert "Event loop is closed" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert loop.complete_steps(loop.checkpoint_dir(w)) == [3, 6, 9]


# The mechanism alone, deterministic: a tensorstore read awaited in a loop that is closed before the read ends.
_LEFTOVER = """
import asyncio, sys
import tensorstore as ts
from train import checkpoints
if sys.argv[1] == "drop":
  checkpoints.drop_closed_loop_errors()
promise, future = ts.Promise.new()
loop = asyncio.new_event_loop()

async def read():
  return await future

async def gather():
  loop.create_task(read())   # another read of the same gather, still running
  await asyncio.sleep(0)
  raise ValueError("the first read failed")

try:
  loop.run_until_complete(gather())
except ValueError:
  pass
loop.close()
promise.set_result(1)        # the read ends: tensorstore's callback aims at the closed loop


class Other:
  def __del__(self):
    raise KeyError("other")   # any other unraisable exception


Other()
"""


def test_only_closed_loop_errors_are_dropped():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  err = {arg: subprocess.run([sys.executable, "-c", _LEFTOVER, arg], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60).stderr for arg in ("keep", "drop")}
  assert "RuntimeError: Event loop is closed" in err["keep"] and "KeyError: 'other'" in err["keep"], err["keep"]
  assert "Event loop is closed" not in err["drop"] and "KeyError: 'other'" in err["drop"], err["drop"]


def test_asyncio_never_retrieved_closed_loop_errors_are_dropped(caplog):
  """The same error as an asyncio task nobody awaited: asyncio's handler logs "Task exception was never retrieved"
  with the traceback on its logger; that record is dropped, any other asyncio error still shows."""
  import logging
  from train.checkpoints import drop_closed_loop_errors
  drop_closed_loop_errors()
  log = logging.getLogger("asyncio")
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    try:
      raise RuntimeError("Event loop is closed")
    except RuntimeError:
      log.error("Task exception was never retrieved", exc_info=True)
    log.error("Task exception was never retrieved\nfuture: <Task exception=RuntimeError('Event loop is closed')>")
    try:
      raise ValueError("something else")
    except ValueError:
      log.error("Task exception was never retrieved", exc_info=True)
  assert [r.exc_info[1].__class__ for r in caplog.records if r.exc_info] == [ValueError]
  assert len(caplog.records) == 1


def test_unretrieved_read_errors_of_a_checkpoint_being_read_are_dropped(caplog, tmp_path):
  """A corrupt step fails every array's read; orbax's gather raises the first and asyncio logs the others
  ("Task exception was never retrieved") at some later garbage collection. Those name the folder being read and
  are dropped; an unretrieved error about anything else still shows."""
  import logging
  from train.checkpoints import drop_closed_loop_errors
  folder = str(tmp_path / "run" / "checkpoints")
  drop_closed_loop_errors(reading=folder)
  log = logging.getLogger("asyncio")
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    for where in (folder + "/6/default/", str(tmp_path / "elsewhere")):
      try:
        raise ValueError(f'DATA_LOSS: Error reading "w.2/.zarray" in OCDBT database at local file "{where}"')
      except ValueError:
        log.error("Task exception was never retrieved", exc_info=True)
    log.error("Task exception was never retrieved\nfuture: <Task exception=ValueError('DATA_LOSS: %s/6/d')>", folder)
    log.error("an asyncio error about %s that is not an unretrieved task", folder)
  shown = [r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records]
  assert len(shown) == 2, shown
  assert "elsewhere" in shown[0] and "not an unretrieved task" in shown[1]
