"""Loads a converted DiT directory (`python -m converters.convert`) into a `WanDiT`, sharded straight into place.

The directory holds `config.json` (DiTConfig fields + "family": "dit" + "source_layout" [+ "quantization"])
and JAX-layout `*.safetensors`. The model is built abstractly (`nnx.eval_shape`), every parameter is read
shard by shard with `wanjax.checkpoint.load_state`, and the two are merged: nothing is allocated twice.
Files converted with `--keep-quantized` load into a model whose block matmuls are quantised
(`wanjax.quant.quantize_model`).
"""

import json
import os

from absl import logging
from flax import nnx

from wanjax import checkpoint, precision
from wanjax.dit.config import DiTConfig, MODEL_TYPES
from wanjax.errors import CheckpointError, UsageError

META_KEYS = ("family", "source_layout", "quantization")
_QUANT_MODES = {"int8": "int8", "float8_e4m3fn": "fp8", "fp8": "fp8"}


def read_config(path):
  """(DiTConfig, meta dict) from a converted directory's config.json."""
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isdir(path):
    raise UsageError(f"{path!r} is not a converted model directory (convert it: python -m converters.convert "
                     f"--src {path} --out DIR)")
  if not os.path.exists(cfg_path):
    raise CheckpointError(f"{path}: no config.json; convert the checkpoint first (python -m converters.convert)")
  with open(cfg_path) as f:
    try:
      d = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
  family = d.get("family", "dit")
  if family != "dit":
    raise UsageError(f"{path} holds a {family!r} model, not a DiT")
  meta = {k: d[k] for k in META_KEYS if k in d}
  return DiTConfig.from_json_dict({k: v for k, v in d.items() if k not in META_KEYS}), meta


def load_dit(path, *, policy="float32", mesh=None, expect_model_type=None, scan=True, remat="none",
             attn_impl="auto", scan_unroll=1, rules=None, cast_kernels=False):
  """Returns the `WanDiT` stored in the converted directory `path`.

  policy: precision policy name or `Policy` (parameters are cast to its param dtype while loading).
  mesh: a `jax.sharding.Mesh`; parameters are sharded by the logical-axis rules (default: one device).
  expect_model_type: "t2v" | "i2v" | "flf2v"; a checkpoint of another type is a UsageError.
  scan, remat, attn_impl, scan_unroll: as `WanDiT`.
  rules: the logical-axis rule table that places the parameters on `mesh` (default `wanjax.sharding.RULES`; e.g.
    `sharding.override_rules("embed=fsdp+context")`).
  cast_kernels: True reads the kernels that the half-precision matmuls only use cast
    (`wanjax.nn.cast_at_use_kernels`) straight into that dtype, for inference with nothing merged into them
    later: the same values `wanjax.nn.cast_kernels` stores after loading, without a float32 copy ever existing
    (T2V-14B under the bf16 policy: 27.0 GiB instead of 53.2). "exact" does so only for kernels the files store
    in that dtype already (e.g. bf16 checkpoints): their values are the file's, so a LoRA merged into them later
    (in float32, rounded once), or a quantiser (which reads them in float32), gives the same kernels as from
    float32 copies. False: as the policy says.
  """
  from wanjax.dit.model import WanDiT
  cfg, meta = read_config(path)
  if expect_model_type is not None:
    if expect_model_type not in MODEL_TYPES:
      raise UsageError(f"expect_model_type={expect_model_type!r}; valid: {', '.join(MODEL_TYPES)}")
    if cfg.model_type != expect_model_type:
      raise UsageError(f"{path} is a {cfg.model_type!r} checkpoint but a {expect_model_type!r} model was "
                       f"expected; use a {expect_model_type} checkpoint or a {cfg.model_type} preset")
  policy = precision.get_policy(policy)
  quant = meta.get("quantization")
  mode = None
  if quant:
    fmt = quant.get("format")
    if fmt not in _QUANT_MODES:
      raise CheckpointError(f"{path}: unknown quantization format {fmt!r}; valid: {', '.join(_QUANT_MODES)}")
    mode = _QUANT_MODES[fmt]

  def build():
    model = WanDiT(cfg, policy=policy, rngs=nnx.Rngs(0), scan=scan, remat=remat, attn_impl=attn_impl,
                   scan_unroll=scan_unroll)
    if mode is not None:
      from wanjax import quant as quantlib
      quantlib.quantize_model(model, mode)
    return model

  abstract = nnx.eval_shape(build)
  files = checkpoint.model_files(path)
  if cast_kernels not in (True, False, "exact"):
    raise UsageError(f"cast_kernels={cast_kernels!r}; valid: True, False, 'exact'")
  if cast_kernels:
    import jax
    import numpy as np
    from wanjax.nn import cast_at_use_kernels
    stored = checkpoint.stored_dtypes(nnx.state(abstract, nnx.Param), files) if cast_kernels == "exact" else {}
    for mpath, m in list(cast_at_use_kernels(abstract)):
      key = ".".join(map(str, mpath)) + ".kernel"
      if cast_kernels == "exact" and stored.get(key) != {np.dtype(m.compute_dtype)}:
        continue
      m.kernel = m.kernel.replace(jax.ShapeDtypeStruct(m.kernel.shape, m.compute_dtype))
  graphdef, state = nnx.split(abstract)
  logging.info("loading %s DiT (dim=%d, layers=%d%s) from %s", cfg.model_type, cfg.dim, cfg.num_layers,
               f", {mode}" if mode else "", path)
  state = checkpoint.load_state(state, files, mesh=mesh, rules=rules)
  return nnx.merge(graphdef, state)
