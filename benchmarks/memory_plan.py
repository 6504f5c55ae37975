"""Per-device memory of T2V-14B inference and DMD training for candidate 8-device meshes (docs/scaling.md).

  python benchmarks/memory_plan.py                       # full 14B, 40 layers, both resolutions (~10 min CPU)
  python benchmarks/memory_plan.py --small               # 2-layer smoke run
  python benchmarks/memory_plan.py --only inference      # or: state, train

Runs on 8 fake CPU devices; nothing is allocated. Three parts:
- state: parameter / optimiser bytes per device from `nnx.eval_shape` + `wanjax.sharding.state_shardings`
  (inference: bf16 weights; DMD: generator fp32 params + AdamW mu/nu + fp32 EMA, critic fp32 params + AdamW,
  frozen bf16 teacher), summed over each leaf's shard shape.
- inference: `jax.jit(forward).lower(...).compile().memory_analysis()` of one CFG forward (batch 2) with
  attn_impl="splash" (Pallas interpret mode on CPU), all 40 layers (the scanned model compiles in seconds).
- train: the same for one generator gradient step (batch 1, bf16 compute, fp32 params, remat policy).
CPU buffer assignment is not TPU/GPU buffer assignment: treat the activation numbers as estimates (see the doc).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from train import state as st  # noqa: E402
from wanjax import sharding as shd  # noqa: E402
from wanjax.dit.config import get_config  # noqa: E402
from wanjax.dit.model import WanDiT, make_forward  # noqa: E402

from benchmarks import cli  # noqa: E402

GIB = 2 ** 30
SHAPES = {"480p": (21, 60, 104), "720p": (21, 90, 160)}   # latent F, H, W of 81 frames: 32,760 / 75,600 tokens
DEVICES = {"v5e": 16, "v6e": 32, "h100": 80}               # GB of HBM per chip
# name -> (mesh, rule overrides). Weights' "embed" axis goes to fsdp and context (maxdiffusion's (context, fsdp)
# FSDP): on a context-only mesh the weights would otherwise be replicated.
MESHES = {
    "cp8": ("context=8", "embed=fsdp+context"),
    "dp2_cp4": ("data=2,context=4", "embed=fsdp+context"),
    "cp4_tp2": ("context=4,tensor=2", "embed=fsdp+context"),
    "tp8": ("tensor=8", ""),
    "fsdp8": ("fsdp=8", ""),
}
INFER_MESHES = ("cp8", "dp2_cp4", "cp4_tp2", "tp8")
TRAIN_MESHES = ("cp8", "cp4_tp2", "tp8")


def mesh_and_rules(name):
  spec, over = MESHES[name]
  return shd.make_mesh(spec), shd.override_rules(over)


def shard_bytes(tree, shardings) -> int:
  """Bytes one device holds: each leaf's shard shape times its itemsize."""
  total = 0
  for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += int(np.prod(s.shard_shape(a.shape), dtype=np.int64)) * np.dtype(a.dtype).itemsize
  return total


def abstract_params(cfg, policy, **kw):
  model = nnx.eval_shape(lambda: WanDiT(cfg, policy=policy, rngs=nnx.Rngs(0), **kw))
  return model, nnx.state(model, nnx.Param)


# ------------------------------------------------------------------------------------------------ state

def state_memory(cfg, mesh_name):
  """GiB per device: bf16 inference weights and the DMD train state parts."""
  mesh, rules = mesh_and_rules(mesh_name)
  _, inf = abstract_params(cfg, "bf16_weights")
  out = {"weights_bf16": shard_bytes(inf, shd.state_shardings(inf, mesh, rules)) / GIB}
  _, params = abstract_params(cfg, "bf16")           # fp32 master params
  pure = nnx.to_pure_dict(params)
  psh = nnx.to_pure_dict(shd.state_shardings(params, mesh, rules))
  tx = st.make_optimizer(lr=2e-6)
  repl = NamedSharding(mesh, P())
  for role, ema in (("generator", True), ("critic", False)):
    abstract = jax.eval_shape(lambda p: st.init_trainee(p, tx, ema=ema), pure)
    out[role] = shard_bytes(abstract, st.trainee_shardings(abstract, psh, tx, repl)) / GIB
  out["teacher_bf16"] = out["weights_bf16"]
  out["dmd_state"] = out["generator"] + out["critic"] + out["teacher_bf16"]
  return out


# ------------------------------------------------------------------------------------------ activations

def _inputs(cfg, batch, grid):
  return (jax.ShapeDtypeStruct((batch,) + grid + (cfg.in_dim,), jnp.float32),
          jax.ShapeDtypeStruct((batch,), jnp.float32),
          jax.ShapeDtypeStruct((batch, cfg.text_len, cfg.text_dim), jnp.float32))


def _analyse(fn, args, in_shardings, mesh, rules, out_shardings=None):
  t0 = time.perf_counter()
  with shd.activate(mesh, rules):
    lowered = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings).lower(*args)
  compiled = lowered.compile()
  m = compiled.memory_analysis()
  return {"argument": m.argument_size_in_bytes / GIB, "output": m.output_size_in_bytes / GIB,
          "temp": m.temp_size_in_bytes / GIB, "alias": m.alias_size_in_bytes / GIB,
          "compile_s": round(time.perf_counter() - t0, 1)}


def inference_memory(cfg, mesh_name, grid, batch=2):
  """One CFG forward (cond + uncond as a batch of 2), bf16 weights, splash attention."""
  mesh, rules = mesh_and_rules(mesh_name)
  model, _ = abstract_params(cfg, "bf16_weights", attn_impl="splash")
  fwd, params, rest = make_forward(model)
  repl = NamedSharding(mesh, P())
  shard = (shd.state_shardings(params, mesh, rules), jax.tree.map(lambda _: repl, rest), repl, repl, repl)
  return _analyse(fwd, (params, rest) + _inputs(cfg, batch, grid), shard, mesh, rules)


def train_memory(cfg, mesh_name, grid, remat, batch=1):
  """One generator gradient (fp32 params, bf16 compute) of a mean-square loss on the DiT output."""
  mesh, rules = mesh_and_rules(mesh_name)
  model, _ = abstract_params(cfg, "bf16", attn_impl="splash", remat=remat)
  fwd, params, rest = make_forward(model)
  repl = NamedSharding(mesh, P())

  def grad(params, rest, x, t, c):
    return jax.grad(lambda p: jnp.mean(jnp.square(fwd(p, rest, x, t, c))))(params)

  shard = (shd.state_shardings(params, mesh, rules), jax.tree.map(lambda _: repl, rest), repl, repl, repl)
  # Gradients come back sharded like the params (as the optimiser update consumes them).
  return _analyse(grad, (params, rest) + _inputs(cfg, batch, grid), shard, mesh, rules, out_shardings=shard[0])


# -------------------------------------------------------------------------------------------------- main

def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="t2v_14b")
  ap.add_argument("--layers", type=int, default=0, help="override the layer count (0: the preset's)")
  ap.add_argument("--small", action="store_true", help="2 layers, 480p only, cp8 only (smoke run)")
  ap.add_argument("--only", choices=("state", "inference", "train"), default=None)
  ap.add_argument("--remat", default="full,dots", help="remat policies for the train part")
  args = ap.parse_args()
  cfg = get_config(args.model)
  layers = 2 if args.small and not args.layers else args.layers
  if layers:
    cfg = dataclasses.replace(cfg, num_layers=layers)
  shapes = {"480p": SHAPES["480p"]} if args.small else SHAPES
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; model {args.model} "
        f"({cfg.num_layers} layers, dim {cfg.dim}); GiB per device")
  rows = []
  if args.only in (None, "state"):
    for name in (("cp8",) if args.small else MESHES):
      r = dict(part="state", mesh=name, **state_memory(cfg, name))
      rows.append(r)
      print(f"state  {name:8s} weights_bf16 {r['weights_bf16']:6.2f}  generator {r['generator']:6.2f}  "
            f"critic {r['critic']:6.2f}  teacher {r['teacher_bf16']:6.2f}  dmd_state {r['dmd_state']:6.2f}")
  if args.only in (None, "inference"):
    for res, grid in shapes.items():
      for name in (("cp8",) if args.small else INFER_MESHES):
        r = dict(part="inference", mesh=name, res=res, **inference_memory(cfg, name, grid))
        r["total"] = r["argument"] + r["output"] + r["temp"] - r["alias"]
        rows.append(r)
        print(f"infer  {res} {name:8s} args {r['argument']:6.2f}  temp {r['temp']:6.2f}  total {r['total']:6.2f}  "
              f"(compile {r['compile_s']} s)")
  if args.only in (None, "train"):
    for remat in args.remat.split(","):
      for res, grid in shapes.items():
        for name in (("cp8",) if args.small else TRAIN_MESHES):
          if remat != "full" and (res != "480p" or name != "cp8"):
            continue   # other policies: one representative configuration
          r = dict(part="train", mesh=name, res=res, remat=remat, **train_memory(cfg, name, grid, remat))
          rows.append(r)
          print(f"train  {res} {name:8s} remat={remat:5s} params {r['argument']:6.2f}  grads {r['output']:6.2f}  "
                f"temp {r['temp']:6.2f}  (compile {r['compile_s']} s)")
  print(json.dumps({"model": args.model, "layers": cfg.num_layers, "rows": rows}))


if __name__ == "__main__":
  cli.run(main)
