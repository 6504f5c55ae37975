"""Loads a converted Wan VAE directory (`config.json` + JAX-layout safetensors) into `WanVAE`.

The model is built abstractly (`nnx.eval_shape`) and each parameter is read straight into place by
`wanjax.checkpoint.load_state`; the architecture comes from `config.json`, which the converter inferred from
the checkpoint's tensor shapes.
"""

import json
import os

from flax import nnx

from wanjax import checkpoint
from wanjax.errors import CheckpointError
from wanjax.precision import FLOAT32
from wanjax.vae.config import VAEConfig
from wanjax.vae.model import WanVAE


def read_config(model_dir) -> VAEConfig:
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{model_dir}: no config.json; convert the VAE first (python -m converters.convert)")
  with open(path) as f:
    d = json.load(f)
  if d.get("family", "vae") != "vae":
    raise CheckpointError(f"{model_dir}: config.json is for model family {d['family']!r}, not 'vae'")
  return VAEConfig.from_json_dict(d)


def load_vae(model_dir, *, policy=FLOAT32, mesh=None, rules=None) -> WanVAE:
  """WanVAE with the weights of `model_dir` (default precision float32, like the reference), placed on `mesh` by
  the logical-axis `rules` (default `wanjax.sharding.RULES`)."""
  cfg = read_config(model_dir)
  abstract = nnx.eval_shape(lambda: WanVAE(cfg, policy=policy, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  state = checkpoint.load_state(abstract_state, checkpoint.model_files(model_dir), mesh=mesh, rules=rules)
  return nnx.merge(graphdef, state)
