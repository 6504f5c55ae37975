"""Loads a converted CLIP vision tower directory (`config.json` + JAX-layout safetensors) into `CLIPVisionTower`.

The tower is built abstractly (`nnx.eval_shape`) and each parameter is read straight into its shard by
`wanjax.checkpoint.load_state`, so nothing is materialised twice.
"""

import os

from flax import nnx

from wanjax import checkpoint
from wanjax.errors import CheckpointError
from wanjax.image.clip import CLIPVisionConfig, CLIPVisionTower


def read_config(model_dir) -> CLIPVisionConfig:
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise CheckpointError(f"{model_dir}: no config.json; convert the CLIP image encoder first "
                          f"(python -m converters.convert)")
  return CLIPVisionConfig.load(path)


def load_clip(model_dir, *, policy, mesh=None, scan=True, attn_impl="auto", rules=None) -> CLIPVisionTower:
  """CLIPVisionTower with the weights of `model_dir`, sharded over `mesh` (default: the first device) by the
  logical-axis `rules` (default `wanjax.sharding.RULES`).

  `policy`: "fp16" runs it as the reference does (fp16 compute, fp32 LayerNorm statistics; spec §5.1);
  "bf16" on TPUs; "float32" for parity checks.
  """
  cfg = read_config(model_dir)
  abstract = nnx.eval_shape(lambda: CLIPVisionTower(cfg, policy=policy, rngs=nnx.Rngs(0), scan=scan,
                                                    attn_impl=attn_impl))
  graphdef, abstract_state = nnx.split(abstract)
  state = checkpoint.load_state(abstract_state, checkpoint.model_files(model_dir), mesh=mesh, rules=rules)
  return nnx.merge(graphdef, state)
