"""Real-size WanDiT presets through `nnx.eval_shape` (nothing allocated): parameter counts against the reference
state dicts (spec wan_model.md §1.1), logical-axis annotations on every parameter, and the converter's file
shapes."""

import jax
import numpy as np
import pytest
from flax import nnx

from wanjax import sharding as shd
from wanjax.dit.config import PRESETS
from wanjax.dit.model import abstract_model

# Reference `WanModel` state-dict sizes (spec §1.1), in billions, to the stated digits.
PARAM_COUNTS_B = {"t2v_1_3b": 1.419, "t2v_14b": 14.288, "i2v_14b": 16.395}


def _params(name):
  model = abstract_model(PRESETS[name])
  return nnx.state(model, nnx.Param)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS_B))
def test_parameter_count_matches_reference(name):
  state = _params(name)
  leaves = jax.tree.leaves(state)
  assert all(isinstance(v, jax.ShapeDtypeStruct) for v in leaves), "eval_shape allocated parameters"
  n = sum(int(np.prod(v.shape)) for v in leaves)
  assert round(n / 1e9, 3) == PARAM_COUNTS_B[name], f"{name}: {n} parameters, reference {PARAM_COUNTS_B[name]} B"


@pytest.mark.parametrize("name", ["i2v_14b", "flf2v_14b", "tiny"])
def test_every_param_has_known_logical_axes(name):
  known = {rule for rule, _ in shd.RULES}
  cfg = PRESETS[name]
  problems = []
  for path, var in nnx.to_flat_state(_params(name)):
    key = ".".join(map(str, path))
    axes = shd.param_axes(var)
    shape = var.get_value().shape
    if len(axes) != len(shape) or any(a is None for a in axes):
      problems.append(f"{key}: axes {axes} for shape {shape}")
    elif not set(axes) <= known:
      problems.append(f"{key}: unknown axes {sorted(set(axes) - known)}")
    if key.startswith("blocks.") and (axes[0] != "layers" or shape[0] != cfg.num_layers):
      problems.append(f"{key}: not stacked over {cfg.num_layers} layers (axes {axes}, shape {shape})")
  assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["t2v_14b", "i2v_14b", "flf2v_14b"])
def test_big_kernels_are_sharded_on_a_full_mesh(name):
  """On a data=1,fsdp=4,context=1,tensor=2 mesh every matrix of the blocks is split both ways (nothing big
  silently replicated)."""
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(1, 4, 1, 2), shd.MESH_AXES)
  for path, var in nnx.to_flat_state(_params(name)):
    key = ".".join(map(str, path))
    shape = var.get_value().shape
    if key.startswith("blocks.") and key.endswith("kernel"):
      spec = shd.spec_for(shd.param_axes(var), shape, mesh)
      assert set(spec) >= {"fsdp", "tensor"}, f"{key}: {shape} sharded as {spec}"


def test_converter_file_shapes_match_model():
  """The converter's per-layer file keys/shapes (converters/names/dit.py) are exactly the model's."""
  from converters.names import dit as dit_names
  from wanjax import checkpoint
  for name in ("t2v_1_3b", "i2v_14b", "flf2v_14b"):
    want = dit_names.file_shapes(PRESETS[name])
    got = checkpoint.expected_file_shapes(_params(name))
    assert set(got) == set(want), (name, sorted(set(got) ^ set(want))[:10])
    bad = sorted(k for k in got if tuple(got[k]) != tuple(want[k]))
    assert not bad, [(k, got[k], want[k]) for k in bad[:10]]


@pytest.mark.parametrize("field,value", [("num_heads", 0), ("num_heads", -2), ("num_layers", 0), ("dim", 0),
                                         ("ffn_dim", -1), ("text_len", 0), ("num_heads", 1.5)])
def test_config_refuses_non_positive_sizes(field, value):
  from wanjax.dit.config import PRESETS, DiTConfig
  from wanjax.errors import UsageError
  import dataclasses
  kw = {f.name: getattr(PRESETS["tiny"], f.name) for f in dataclasses.fields(DiTConfig)}
  kw[field] = value
  with pytest.raises(UsageError, match=rf"DiT config {field}={value!r} must be a whole number >= 1"):
    DiTConfig(**kw)
