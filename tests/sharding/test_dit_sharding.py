"""WanDiT forward sharded over the 8 fake CPU devices (fsdp, tensor, context = sequence, data) equals the
single-device forward; parameters are placed with `sharding.state_shardings` and activations constrained by
`sharding.activate`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.conftest import max_rel_err
from wanjax import sharding as shd
from wanjax.dit.config import PRESETS
from wanjax.dit.model import abstract_model, make_forward

TOL = 1e-5     # max|sharded - single| <= TOL · max|single|
# tiny: D = 24, 2 heads, ffn 40; tokens L = 3·2·3 = 18, so every mesh axis size used below divides what it shards.
B, F, H, W, S = 2, 3, 4, 6, 7


def _random_model(name, seed):
  """Random values everywhere (the zero-initialised head included, so outputs are not trivially 0)."""
  cfg = PRESETS[name]
  graphdef, abstract = nnx.split(abstract_model(cfg))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda a: np.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), abstract)
  return cfg, nnx.merge(graphdef, state)


def _inputs(cfg, seed):
  rng = np.random.default_rng(seed)
  args = (rng.standard_normal((B, F, H, W, 16)).astype(np.float32), np.array([999.0, 250.0], np.float32),
          rng.standard_normal((B, S, cfg.text_dim)).astype(np.float32))
  kw = {}
  if cfg.has_image_input:
    kw = dict(y=rng.standard_normal((B, F, H, W, 20)).astype(np.float32),
              clip_fea=rng.standard_normal((B, cfg.num_image_tokens, cfg.image_dim)).astype(np.float32))
  return args, kw


_REFERENCES = {}


def _reference(name):
  """Single-device forward of a random `name` model (cached per preset)."""
  if name not in _REFERENCES:
    cfg, model = _random_model(name, seed=0)
    fwd, params, rest = make_forward(model)
    args, kw = _inputs(cfg, seed=1)
    single = jax.jit(fwd)(params, rest, *args, **kw)
    _REFERENCES[name] = cfg, fwd, params, rest, args, kw, np.asarray(single)
  return _REFERENCES[name]


@pytest.mark.parametrize("name, mesh_spec", [
    ("tiny", "fsdp=8"), ("tiny", "data=2,fsdp=2,tensor=2"), ("tiny", "context=2,fsdp=2,tensor=2"),
    ("tiny_i2v", "data=2,context=2,tensor=2")])
def test_sharded_forward_equals_single_device(name, mesh_spec):
  cfg, fwd, params, rest, args, kw, single = _reference(name)
  mesh = shd.make_mesh(mesh_spec)
  with shd.activate(mesh):
    sharded = jax.device_put(params, shd.state_shardings(params, mesh))
    q = sharded["blocks"]["self_attn"]["q"]["kernel"][...]
    assert q.sharding.spec == shd.spec_for(("layers", "embed", "heads"), q.shape, mesh)
    assert len(q.sharding.device_set) == 8
    out = jax.jit(fwd)(sharded, rest, *args, **kw)
    err = max_rel_err(np.asarray(out), single)
  assert err <= TOL, f"{cfg.model_type} on mesh {mesh_spec}: max rel err {err:.3g}"


def test_activations_follow_the_logical_rules():
  """Inside `activate`, the embedded video tokens come out sharded as ("batch", "length", "act_embed") says:
  batch over data, sequence over context."""
  cfg, model = _random_model("tiny", seed=2)
  args, _ = _inputs(cfg, seed=3)
  mesh = shd.make_mesh("data=2,context=2,tensor=2")
  graphdef, state = nnx.split(model)

  @jax.jit
  def tokens(state, x, t, ctx):
    return nnx.merge(graphdef, state).embed(x, t, ctx).tokens

  with shd.activate(mesh):
    out = tokens(state, *map(jnp.asarray, args))
  want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "context", None))
  assert out.sharding.is_equivalent_to(want, out.ndim), out.sharding
