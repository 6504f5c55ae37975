"""A train state saved on one mesh resumes on another mesh and device count (README "Training"): written with
fsdp=8 on 8 devices, restored by processes with 2 devices (fsdp=2, data=2) and 1 device, every value equal and
placed in the new layout."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from train import loop
from wanjax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESUME = """
import sys, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from train import checkpoints, loop
from wanjax import sharding
mesh = sharding.make_mesh(sys.argv[2])
abstract = {"w": jax.ShapeDtypeStruct((8, 3), np.float32), "step": jax.ShapeDtypeStruct((), np.int32)}
shardings = {"w": NamedSharding(mesh, P(sharding.spec_for(("embed", None), (8, 3), mesh)[0], None)),
             "step": NamedSharding(mesh, P())}
manager = loop.checkpoint_manager(sys.argv[1], async_save=False)
state, step = checkpoints.restore_or_create(manager, abstract_state=abstract, shardings=shardings,
                                            create=lambda: None)
manager.close()
np.savez(sys.argv[3], step=step, w=np.asarray(state["w"]), n=len(jax.devices()),
         shard=np.asarray(state["w"].sharding.shard_shape((8, 3))))
"""


@pytest.mark.parametrize("devices,mesh,shard", [(2, "fsdp=2", (4, 3)), (2, "data=2", (8, 3)), (1, "", (8, 3))])
def test_state_saved_on_eight_devices_resumes_on_fewer(tmp_path, devices, mesh, shard):
  eight = sharding.make_mesh("fsdp=8", devices=jax.devices()[:8])
  w = (np.arange(24, dtype=np.float32).reshape(8, 3) - 7) / 3
  state = {"w": jax.device_put(w, NamedSharding(eight, P("fsdp", None))),
           "step": jax.device_put(np.int32(6), NamedSharding(eight, P()))}
  work = str(tmp_path / "run")
  manager = loop.checkpoint_manager(work, async_save=False)
  loop.save(manager, 6, state)
  manager.wait_until_finished()
  manager.close()
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  out = tmp_path / "resumed.npz"
  run = subprocess.run([sys.executable, "-c", RESUME, work, mesh, str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  got = np.load(out)
  assert int(got["step"]) == 6 and int(got["n"]) == devices
  assert tuple(got["shard"]) == shard
  np.testing.assert_array_equal(got["w"], w)
