"""`--config.mesh` strings: what parses, and one clear error for each mistake (the axis or size at fault)."""

import re

import jax
import pytest

from wanjax import sharding
from wanjax.errors import UsageError


def test_mesh_spec_sizes_and_fill():
  assert sharding.parse_mesh("data=2, fsdp=-1") == {"data": 2, "fsdp": -1}
  assert sharding.parse_mesh("") == {}
  mesh = sharding.make_mesh("data=2,fsdp=-1", devices=jax.devices()[:8])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}


@pytest.mark.parametrize("spec,message", [
    ("data=2,data=4", "names axis 'data' twice"),            # was silently data=4
    ("data=0", "axis sizes must be >= 1 (or -1 for the remaining devices), got {'data': 0}"),
    ("tensor=-2", "got {'tensor': -2}"),
    ("data=x", "bad entry 'data=x'"),
    ("batch=2", "unknown mesh axes ['batch']"),
    ("data=-1,fsdp=-1", "only one mesh axis may be -1"),
    ("data=3,fsdp=-1", "8 devices not divisible by 3"),
    ("data=16", "needs 16 devices; 8 available"),
])
def test_mesh_spec_errors(spec, message):
  with pytest.raises(UsageError, match=re.escape(message)) as e:
    sharding.make_mesh(spec, devices=jax.devices()[:8])
  assert str(e.value).startswith(f"--config.mesh={spec!r}"), e.value   # names the flag and the value at fault


def test_sharding_overrides_apply():
  rules = sharding.override_rules("embed=fsdp+context, heads=none")
  mesh = sharding.make_mesh("context=4,tensor=2", devices=jax.devices()[:8])
  assert sharding.spec_for(("embed", "heads"), (24, 8), mesh, rules) == jax.sharding.PartitionSpec("context", None)
  assert sharding.spec_for(("embed", "heads"), (24, 8), mesh) == jax.sharding.PartitionSpec(None, "tensor")


@pytest.mark.parametrize("overrides,message", [
    ("embed=fsdp+contxt", "unknown mesh axis 'contxt' in 'embed=fsdp+contxt'"),   # was silently embed=fsdp
    ("embed=bogus", "unknown mesh axis 'bogus'"),                                   # was silently replicated
    ("emebd=fsdp+context", "unknown logical axis 'emebd'"),                         # was silently unused
    ("embed:fsdp", "bad rule 'embed:fsdp'"),
])
def test_sharding_overrides_errors(overrides, message):
  with pytest.raises(UsageError, match=re.escape(message)) as e:
    sharding.override_rules(overrides)
  assert str(e.value).startswith("sharding_overrides: ") and "\n" not in str(e.value)


def test_a_mesh_leaving_devices_idle_is_said(caplog):
  import logging
  with caplog.at_level(logging.WARNING):
    mesh = sharding.make_mesh("data=3", devices=jax.devices()[:8])
  assert mesh.devices.size == 3
  assert "mesh='data=3' uses 3 of the 8 devices" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    sharding.make_mesh("data=2,fsdp=-1", devices=jax.devices()[:8])
    sharding.make_mesh("", devices=jax.devices()[:8])   # the default: one device, as documented
    sharding.make_mesh("data=1", devices=jax.devices()[:8])   # one device asked for explicitly
  assert "idle" not in caplog.text
