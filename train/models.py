"""Builds the DiTs a trainer needs: abstract shapes, shardings, random init or sharded weight loading.

Follows the big_vision/flax GSPMD recipe (style.md §1.1, §1.2): the model is created abstractly
(`nnx.eval_shape`), each param gets its NamedSharding from the logical-axis rules, random init runs inside
`jit(out_shardings=…)` and converted weights are read shard by shard (`wanjax.checkpoint.load_state`).
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from wanjax import checkpoint
from wanjax import sharding as shd
from wanjax.dit.config import PRESETS, DiTConfig, get_config
from wanjax.dit.load import read_config
from wanjax.dit.model import WanDiT
from wanjax.errors import CheckpointError

from train.state import ModelFn


@dataclasses.dataclass
class BuiltModel:
  cfg: DiTConfig
  fn: ModelFn            # apply(params, x, t, context, **kw) -> v
  abstract: dict         # pure dict of ShapeDtypeStruct
  shardings: dict        # pure dict of NamedSharding
  random_init: object    # () -> pure dict of params (call inside jit)
  weights: str           # converted model dir, or '' for random init
  # {param path (tuple of pure-dict keys): compute dtype} of the float32 kernels only ever read cast to a half
  # compute dtype (`wanjax.nn.cast_at_use_kernels`): a frozen copy may hold them in that dtype, same outputs.
  cast_at_use: dict = dataclasses.field(default_factory=dict)

  def frozen(self, params):
    """A copy of `params` (pure dict) for a model that is never updated (a teacher): the kernels its half-precision
    matmuls only read cast (`cast_at_use`) are stored cast, so its outputs are bit-identical in less memory."""
    def copy(path, x):
      key = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
      dtype = self.cast_at_use.get(key)
      return x.astype(dtype) if dtype is not None and x.dtype == jnp.float32 else jnp.copy(x)
    return jax.tree_util.tree_map_with_path(copy, params)

  def load(self, mesh, rules):
    """Concrete sharded params from `weights`, or None for random init."""
    if not self.weights:
      return None
    abstract_state = self.fn.to_state(self.abstract)
    state = checkpoint.load_state(abstract_state, checkpoint.model_files(self.weights), mesh=mesh, rules=rules)
    return nnx.to_pure_dict(state)


def preset_mismatch(weights, preset, file_cfg, cfg) -> str:
  """One line: the fields in which a checkpoint's DiT config differs from the preset's, and the preset(s) it
  does match (the guidance embedding aside, which the config adds on its own)."""
  diff = [f.name for f in dataclasses.fields(cfg) if getattr(file_cfg, f.name) != getattr(cfg, f.name)]
  fields = ", ".join(f"{n} {getattr(file_cfg, n)!r} (preset: {getattr(cfg, n)!r})" for n in diff)
  same = [name for name, p in PRESETS.items()
          if dataclasses.replace(p, guidance_embed=file_cfg.guidance_embed) == file_cfg]
  hint = (f"; it matches preset {' / '.join(repr(n) for n in same)} (--config.models.<role>.preset=NAME)"
          if same else "")
  return f"{weights}: the checkpoint's DiT config differs from preset {preset!r} in {fields}{hint}"


# Presets small enough that training them from random initialisation is meant (tests and smoke runs, the toy
# world trained from scratch): no warning when they have no weights.
SCRATCH_PRESETS = frozenset({"tiny", "tiny_i2v", "toyworld"})


def warn_random_init(mcfg, role):
  """Logs a warning when the full-size DiT of `models.<role>` has no weights, i.e. starts from random init."""
  if mcfg.weights or mcfg.preset in SCRATCH_PRESETS:
    return
  logging.warning("models.%s.weights is empty: the %s %s starts from random initialisation, so this run trains "
                  "(or distils from) random weights; set --config.models.%s.weights to a converted checkpoint "
                  "(python -m converters.convert)", role, mcfg.preset, role, role)


def build_dit(mcfg, *, seed, mesh, rules=shd.RULES, role=None) -> BuiltModel:
  """mcfg: a `configs.train_common.model` ConfigDict (preset, weights, precision, remat, scan, attn_impl; an
  optional `guidance_embed=True` adds the guidance embedding to the preset). `role` names the `models.<role>`
  entry for the warning about a full-size model without weights; None where empty weights do not mean random
  init (a student that starts from its teacher's weights)."""
  cfg = get_config(mcfg.preset)
  if role is not None:
    warn_random_init(mcfg, role)
  if mcfg.get("guidance_embed", False):   # CFG-distilled students (post_training.md A.2)
    cfg = dataclasses.replace(cfg, guidance_embed=True)
  if mcfg.weights:
    path = os.path.join(mcfg.weights, "config.json")
    if not os.path.exists(path):
      raise CheckpointError(f"{mcfg.weights}: no config.json (convert first: python -m converters.convert)")
    file_cfg = read_config(mcfg.weights)[0]   # drops the converter's meta keys (family, source_layout, ...)
    if file_cfg != cfg:
      raise CheckpointError(preset_mismatch(mcfg.weights, mcfg.preset, file_cfg, cfg))
  kwargs = dict(policy=mcfg.precision, scan=mcfg.scan, remat=mcfg.remat, attn_impl=mcfg.attn_impl)

  def make():
    return WanDiT(cfg, rngs=nnx.Rngs(seed), **kwargs)

  abstract_module = nnx.eval_shape(make)
  fn, abstract = ModelFn.from_module(abstract_module)
  param_shardings = nnx.to_pure_dict(shd.state_shardings(fn.to_state(abstract), mesh, rules))
  if jax.tree.leaves(fn.rest):
    # Non-param state (buffers) must be concrete to be merged inside jit; jit drops the unused params.
    fn.rest = jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[2])()

  def random_init():
    return nnx.to_pure_dict(nnx.split(make(), nnx.Param, ...)[1])

  from wanjax.nn import cast_at_use_kernels
  cast_at_use = {tuple(path) + ("kernel",): m.compute_dtype for path, m in cast_at_use_kernels(abstract_module)}
  return BuiltModel(cfg=cfg, fn=fn, abstract=abstract, shardings=param_shardings, random_init=random_init,
                    weights=mcfg.weights, cast_at_use=cast_at_use)

