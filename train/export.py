"""Export of trained weights to JAX-layout model directories (`config.json` + `model.safetensors`).

No reference counterpart: the reference trainers save torch state dicts; here a trainer's orbax checkpoint
(`train/loop.py`, one `TrainState` pytree) becomes the same directory format the converters write
(`converters/engine.py: write_model`), so `wanjax.dit.load.load_dit`, `wanjax.vae.load.load_vae` and
`wanjax.text.load.load_umt5` (and therefore `infer.sample`, `train.preprocess` and the trainers'
`models.*.weights`) read trained models exactly as converted ones. Stacked-layer params `blocks.x` are
written per layer as `blocks.{i}.x` (`wanjax.checkpoint.file_keys_for`). An existing model in `--out` is
replaced crash-safely (`wanjax/model_dir.py`, shared with the converters).

  python -m train.export --config configs/train/toyworld_teacher.py --workdir runs/teacher --out ckpt/teacher
  python -m train.export --config configs/train/cfg_distill.py --workdir runs/cfgd --step 400 --out ckpt/cfgd400
  python -m train.export --config configs/train/toyworld_dmd.py --workdir runs/dmd --out ckpt/dmd --ema
  python -m train.export --config configs/train/toyworld_vae.py --workdir runs/vae --out ckpt/vae
  python -m train.export --umt5 toyworld --seed 0 --out ckpt/umt5      # frozen random text encoder
"""

import dataclasses
import json
import os
import re
import sys

import jax
import ml_dtypes
import numpy as np
from absl import logging
from flax import nnx

from wanjax import checkpoint, model_dir
from wanjax import sharding as shd
from wanjax.errors import CheckpointError, UsageError
from wanjax.fileio import atomic_open

SOURCE_LAYOUT = "wanjax-train"   # config.json "source_layout" of exported dirs (converters write theirs)
WEIGHTS = model_dir.WEIGHTS
DIT_OBJECTIVES = ("flow_matching", "dmd", "ode_init", "cfg_distill", "step_distill")


# ------------------------------------------------------------------------------------------------ writing

def file_tensors(abstract_state, params) -> dict:
  """{file key: array (bf16 params stay bf16, the rest float32)} for every variable of `abstract_state` (an nnx.State of the model), values
  looked up in `params` (nested dicts keyed like `nnx.to_pure_dict`, int or str keys, host or device arrays).
  A stacked param `blocks.x` `[n, ...]` becomes `blocks.0.x` ... `blocks.{n-1}.x`."""
  out, problems = {}, []
  for path, var in nnx.to_flat_state(abstract_state):
    node = _lookup(params, path)
    name = ".".join(map(str, path))
    shape = tuple(np.shape(var.get_value()))
    if node is None:
      problems.append((name, f"missing from the trained params (model shape {shape})"))
      continue
    value = np.asarray(jax.device_get(node))
    if value.dtype != ml_dtypes.bfloat16:   # written as trained: bf16 stays bf16 (half the file), the rest float32
      value = value.astype(np.float32)
    if value.shape != shape:
      problems.append((name, f"trained {value.shape} vs model {shape}"))
      continue
    stacked = len(shd.param_axes(var)) - len(var.get_metadata().get("axes", ()))
    keys = checkpoint.file_keys_for(name, stacked, shape[0] if stacked else 0)
    if stacked:
      out.update({k: value[i] for i, k in enumerate(keys)})
    else:
      out[keys[0]] = value
  if problems:
    from wanjax.errors import format_key_problems
    raise CheckpointError("trained params do not match the model:\n" + format_key_problems(problems))
  return out


def _lookup(params, path):
  """params[path] matching keys by name (orbax restores list indices as strings, and sorts them as strings:
  leaf ORDER differs from the module's, so trees are always matched by path, never by flattening)."""
  node = params
  for p in path:
    node = node.get(p, node.get(str(p))) if isinstance(node, dict) else None
    if node is None:
      return None
  return node


def module_from_params(build, params):
  """The NNX module `build()` with every Param taken by path from `params` (e.g. a restored train state)."""
  import jax.numpy as jnp
  graphdef, state = nnx.split(nnx.eval_shape(build))
  flat = []
  for path, var in nnx.to_flat_state(state):
    value = _lookup(params, path)
    if value is None:
      raise CheckpointError(f"{'.'.join(map(str, path))}: missing from the trained params")
    flat.append((path, var.replace(jnp.asarray(value, var.get_value().dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def write_model_dir(out_dir, tensors: dict, config: dict):
  """Writes `out_dir/model.safetensors` + `out_dir/config.json` crash-safely (`wanjax.model_dir`, as the
  converters): both are written complete into a staging folder inside `out_dir`, then renamed in under a
  journal. A crash at any point leaves the old pair, or a folder the loaders refuse until the next export or
  conversion into it finishes the replacement; never the old config beside the new weights. Other files in
  `out_dir` are left alone; other `*.safetensors` there are refused (the loaders would read them too)."""
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise UsageError(f"--out {out_dir}: is a file; give a model folder to write")
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise UsageError(f"--out {out_dir}: cannot create the folder ({e.strerror or e}); pass a writable one") from None
  model_dir.check_no_other_weights(out_dir)
  with model_dir.staging(out_dir) as stage:
    checkpoint.save_tensors(os.path.join(stage, WEIGHTS), tensors, metadata={"format": "wanjax"})
    with atomic_open(os.path.join(stage, model_dir.CONFIG), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
    model_dir.commit(out_dir, (WEIGHTS, model_dir.CONFIG))
  n = sum(int(np.size(v)) for v in tensors.values())
  logging.info("exported %d parameters to %s", n, out_dir)
  return out_dir


def module_dir(out_dir, module, config: dict):
  """Writes a concrete NNX module's params with `config` (e.g. a random frozen encoder)."""
  state = nnx.state(module, nnx.Param)
  return write_model_dir(out_dir, file_tensors(state, nnx.to_pure_dict(state)), config)


# ------------------------------------------------------------------------------------------------ reading

def restore_trained(workdir, *, step=None):
  """(step, state as nested dicts of host arrays) of a trainer's orbax checkpoint (latest unless `step`).

  Restored without a target tree (every array as NumPy on the host), so no optimiser or mesh has to be rebuilt.
  """
  import orbax.checkpoint as ocp
  from train import checkpoints, loop
  if not os.path.isdir(loop.checkpoint_dir(workdir)):   # checked first: the manager would create the folder
    raise UsageError(f"--workdir {workdir}: no checkpoint in {loop.checkpoint_dir(workdir)}; train first")
  manager = loop.checkpoint_manager(workdir, keep=1_000_000, async_save=False, read_only=True)
  steps = sorted(manager.all_steps())
  if not steps or (step is not None and step not in steps):
    manager.close()
    raise UsageError(f"--workdir {workdir}: no checkpoint " + (f"of step {step}; saved steps: "
                     f"{', '.join(map(str, steps))}" if steps else f"in {loop.checkpoint_dir(workdir)}; train first"))
  step = steps[-1] if step is None else step
  checkpoints.drop_closed_loop_errors(reading=loop.checkpoint_dir(workdir))   # no orbax tracebacks on a failed read
  try:
    meta = manager.item_metadata(step)
    meta = getattr(meta, "tree", meta)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    state = manager.restore(step, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except Exception as e:   # noqa: BLE001  (orbax and tensorstore raise many types for missing or cut files)
    others = ", ".join(str(s) for s in steps if s != step)
    raise CheckpointError(
        f"--workdir {workdir}: checkpoint step {step} in {loop.checkpoint_dir(workdir)} cannot be read "
        f"({read_error(e)}); " + (f"export another step with --step (saved: {others}) or retrain it" if others
                                  else "no other step is saved: retrain it")) from None
  finally:
    manager.close()
  return step, state


def read_error(e, limit=300) -> str:
  """The first line of an orbax/tensorstore read error without tensorstore's spec dump. Beyond `limit` chars the
  middle is cut: tensorstore nests its messages, the kind comes first and the innermost reason last."""
  lines = str(e).strip().splitlines()
  text = re.sub(r"\s*\[tensorstore_spec=.*$", "", lines[0]) if lines else type(e).__name__
  if isinstance(e, json.JSONDecodeError):   # orbax does not say which of its metadata files it was reading
    text = f"a metadata file is not valid JSON: {text}"
  return text if len(text) <= limit else f"{text[:limit // 3]} ... {text[-(limit - limit // 3):]}"


def trained_params(state, *, role="generator", ema=False):
  """The params of `role` ('generator' | 'critic' | 'teacher') in a restored state; `ema` takes the EMA
  shadow (error if the run kept none)."""
  if role not in ("generator", "critic", "teacher"):
    raise UsageError(f"role={role!r}; valid: generator, critic, teacher")
  node = state.get(role) if isinstance(state, dict) else None
  if not node:
    raise UsageError(f"the checkpoint has no {role!r} params (roles: {', '.join(sorted(state))})")
  if role == "teacher":
    return node
  if ema:
    if not node.get("ema"):
      raise UsageError(f"the checkpoint's {role} has no EMA shadow (ema_decay=0); export without --ema")
    return node["ema"]
  return node["params"]


# ------------------------------------------------------------------------------------------------ models

def dit_config(c, role="generator"):
  """(preset, DiTConfig) of `role`'s params in a checkpoint of the run `c`, built as its trainer builds them
  (`train.models.build_dit`: the preset of the `models.*` entry, plus the guidance embedding it asks for; a
  `weights` dir must have that config to train at all). CFG distillation's student is its generator's preset
  with the embedding and the teacher is without it (`train/cfg_distill.py`); step distillation's student has
  the teacher's config (`train/step_distill.py`)."""
  from wanjax.dit.config import get_config
  if c.objective == "step_distill":
    m = c.models.teacher
  else:
    m = c.models[role if role in c.models else "generator"]
  guidance = role == "generator" if c.objective == "cfg_distill" else m.get("guidance_embed", False)
  cfg = get_config(m.preset)
  return m.preset, (dataclasses.replace(cfg, guidance_embed=True) if guidance else cfg)


def dit_tensors(cfg, params) -> dict:
  """{file key: array} of DiT `params` (pure dict, stacked blocks) of config `cfg`, checked against its shapes."""
  from wanjax.dit.model import WanDiT
  abstract = nnx.state(nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  return file_tensors(abstract, params)


def write_dit(out_dir, cfg, params, *, extra=None):
  """Writes DiT `params` with `cfg` as a `load_dit` directory (the one writer of the trainers' DiT exports)."""
  config = dict(cfg.to_json_dict(), family="dit", source_layout=SOURCE_LAYOUT, **(extra or {}))
  return write_model_dir(out_dir, dit_tensors(cfg, params), config)


def export_dit(c, workdir, out_dir, *, role="generator", ema=False, step=None):
  """A DiT trainer's checkpoint (flow_matching / distill / cfg_distill / step_distill) -> a `load_dit` dir."""
  preset, cfg = dit_config(c, role)
  step, state = restore_trained(workdir, step=step)
  write_dit(out_dir, cfg, trained_params(state, role=role, ema=ema))
  return {"kind": "dit", "preset": preset, "step": int(step), "role": role, "ema": bool(ema), "out": out_dir}


def random_umt5(preset, *, seed=0, policy="float32", pos_std=3.0, query_std=0.1):
  """A umT5 encoder with host-drawn random weights: the toy world's frozen text encoder (docs/toyworld.md).

  Norm scales 1; projections ~ N(0, 1/fan_in) (unit-RMS in, unit-RMS out); token embeddings ~ N(0, 1), so
  each word enters the residual stream as strongly as each block's update. The relative position biases
  (~ N(0, pos_std²)) dominate the attention logits (queries scaled by `query_std`): each head mixes words at
  fixed random offsets, which writes the neighbouring adjectives into a noun's vector (the DiT's
  cross-attention sees the context as a set, so binding must live in the vectors). Measured linear probes in
  docs/toyworld.md."""
  from wanjax.text import umt5
  import jax.numpy as jnp
  cfg = umt5.get_config(preset)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: umt5.UMT5Encoder(cfg, policy=policy, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng([seed, 0x75])
  flat = []
  for path, var in nnx.to_flat_state(state):
    v = var.get_value()
    layer = len(shd.param_axes(var)) - len(var.get_metadata().get("axes", ()))
    eff = v.shape[layer:]
    if len(eff) == 1:
      value = np.ones(v.shape)                       # RMS-norm scales (umT5 has no biases)
    else:
      unit = path[-2] in ("token_embedding", "pos_embedding")
      value = rng.standard_normal(v.shape) / (1.0 if unit else np.sqrt(np.prod(eff[:-1])))
      value *= pos_std if path[-2] == "pos_embedding" else query_std if path[-2] == "q" else 1.0
    flat.append((path, var.replace(jnp.asarray(value, v.dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def export_random_umt5(out_dir, preset, *, seed=0):
  model = random_umt5(preset, seed=seed)
  config = dict(model.cfg.to_json_dict(), family="umt5", source_layout=SOURCE_LAYOUT)
  module_dir(out_dir, model, config)
  return {"kind": "umt5", "preset": preset, "seed": seed, "out": out_dir}


def export(c, workdir, out_dir, *, role="generator", ema=False, step=None):
  """Dispatches on the config's objective: 'vae' (train.vae, fits the latent statistics) or a DiT trainer."""
  if not out_dir:
    raise UsageError("--out is required (the model directory to write)")
  if c.objective == "vae":
    from train import vae
    return vae.export(c, workdir, out_dir, step=step)
  if c.objective in DIT_OBJECTIVES:
    return export_dit(c, workdir, out_dir, role=role, ema=ema, step=step)
  if c.objective == "reward_lora":
    raise UsageError(f"objective='reward_lora' trains a LoRA, not a DiT: its trainer already writes it beside "
                     f"every checkpoint, {os.path.join(workdir, 'lora', 'step_<N>.safetensors')} (and "
                     f"lora/last.safetensors); pass that to infer.sample --config.lora")
  raise UsageError(f"objective={c.objective!r} cannot be exported; valid: vae, {', '.join(DIT_OBJECTIVES)}")


def main(argv):
  from absl import flags
  from infer import cli
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  try:
    if f.umt5:
      s = export_random_umt5(f.out, f.umt5, seed=f.seed)
    else:
      if f.config is None or not f.workdir:
        raise UsageError("give --config and --workdir of a training run (or --umt5 PRESET for a random encoder)")
      s = export(f.config, f.workdir, f.out, role=f.role, ema=f.ema, step=f.step)
  except UsageError as e:   # CheckpointError included
    cli.fail(e)
  sys.stdout.write(json.dumps(s) + "\n")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "The training config of the run.", lock_config=True)
  flags.DEFINE_string("workdir", None, "The training run's --workdir.")
  flags.DEFINE_string("out", None, "Model directory to write (an existing model in it is replaced "
                                    "crash-safely).")
  flags.DEFINE_string("role", "generator", "Which network of the train state: generator, critic, teacher.")
  flags.DEFINE_bool("ema", False, "Export the generator's EMA shadow.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("umt5", "", "Write a frozen random umT5 of this preset instead (e.g. toyworld).")
  flags.DEFINE_integer("seed", 0, "Seed of the random umT5.")
  from infer import cli
  app.run(main, flags_parser=cli.flags_parser(what="config", hint="the run's configs/train/<name>.py[:arg]"))
