"""Loads a converted umT5 encoder directory (`config.json` + JAX-layout safetensors) into `UMT5Encoder`.

The model is built abstractly (`nnx.eval_shape`) and each parameter is read straight into its shard by
`wanjax.checkpoint.load_state`, so the 11 GB bf16 encoder is never replicated on one device.
"""

import os

from flax import nnx

from wanjax import checkpoint
from wanjax.errors import CheckpointError
from wanjax.text.umt5 import UMT5Config, UMT5Encoder


def read_config(model_dir) -> UMT5Config:
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{model_dir}: no config.json; convert the text encoder first "
                          f"(python -m converters.convert)")
  return UMT5Config.load(path)


def load_umt5(model_dir, *, policy="bf16", mesh=None, scan=True, rules=None) -> UMT5Encoder:
  """UMT5Encoder with the weights of `model_dir`, sharded over `mesh` (default: the first device) by the
  logical-axis `rules` (default `wanjax.sharding.RULES`)."""
  cfg = read_config(model_dir)
  abstract = nnx.eval_shape(lambda: UMT5Encoder(cfg, policy=policy, rngs=nnx.Rngs(0), scan=scan))
  graphdef, abstract_state = nnx.split(abstract)
  state = checkpoint.load_state(abstract_state, checkpoint.model_files(model_dir), mesh=mesh, rules=rules)
  return nnx.merge(graphdef, state)
