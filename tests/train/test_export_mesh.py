"""A checkpoint written on a mesh is exported by a process with fewer devices (an 8-chip run exported on a laptop).

Before, the read-only manager had no item handler: its metadata was None, orbax restored with the shardings
saved in the checkpoint, and a process without those devices could not read the step at all.
"""

import os
import subprocess
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from train import loop
from wanjax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

READ = """
import sys, numpy as np
from train import export
step, state = export.restore_trained(sys.argv[1])
p = state["generator"]["params"]
np.savez(sys.argv[2], step=step, w=p["w"], b=p["b"], kind=type(p["w"]).__name__)
"""


def test_export_reads_a_step_written_on_more_devices(tmp_path):
  mesh = sharding.make_mesh("fsdp=8", devices=jax.devices()[:8])
  w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 7
  b = np.linspace(-1, 1, 5, dtype=np.float32)
  state = {"generator": {"params": {"w": jax.device_put(w, NamedSharding(mesh, P("fsdp", None))),
                                    "b": jax.device_put(b, NamedSharding(mesh, P()))}}}
  work = str(tmp_path / "run")
  manager = loop.checkpoint_manager(work, async_save=False)
  loop.save(manager, 5, state)
  manager.wait_until_finished()
  manager.close()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  out = tmp_path / "read.npz"
  run = subprocess.run([sys.executable, "-c", READ, work, str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  got = np.load(out)
  assert int(got["step"]) == 5 and str(got["kind"]) == "ndarray"
  np.testing.assert_array_equal(got["w"], w)
  np.testing.assert_array_equal(got["b"], b)
