"""DMD training-step benchmark: `configs/train/dmd_bidirectional.py` (T2V-1.3B generator + frozen teacher + critic
in one state, fp32 master weights, bf16 compute, full remat), batch 1, 81x480x832 (latent 21x60x104, 32,760
tokens), random weights and random fixed text contexts (no checkpoint, no umT5, nothing written to disk).

  PYTHONPATH=. python3 benchmarks/dmd_step.py                 # GPU: full 30 layers
  PYTHONPATH=. python3 benchmarks/dmd_step.py --layers 4      # quick check of the same shapes
  PYTHONPATH=. python3 benchmarks/dmd_step.py --teacher-param-dtype float32    # the frozen teacher as loaded (+2.6 GiB)
  python benchmarks/dmd_step.py --small                       # CPU smoke test (dmd_smoke's tiny models)

Uses the trainer itself (`train.distill.build_dmd`: state creation, `dmd_step`, the jits with the donated
state), so what is timed is what `python -m train.distill` runs. Measures: state bytes by part (from the
pytree), device memory after state creation and the peak after everything, compile time of the generator
step and of the critic step (lower + compile), their first call, and the median seconds of `--iters` further
calls; a training iteration is 1 generator step + (ratio - 1) critic steps (the SF counter counts critic
updates; a generator step also does one critic update, `train/distill.py`).

Model FLOPs (MFU) are counted analytically; one DiT forward of batch b over L video and S text tokens is
  b * (layers * (8 L D^2 + 4 L^2 D + 4 L D^2 + 4 S D^2 + 4 L S D + 4 L D M) + embeddings)
(self q/k/v/o, self QK^T and PV, cross q/o, cross k/v, cross QK^T and PV, FFN; 2 FLOPs per MAC), a backward
is 2 forwards. DiT passes per step, read off `dmd_step` (j_g, j_c ~ U{0..N-1} are the rollout exit indices of
the generator update and of the critic update, N = 4 steps, so E[j] = 1.5):
  generator step: generator rollout j_g no-grad forwards + 1 forward/backward (exit step, with gradient);
                  critic (fake score) 1 forward, teacher 1 forward at batch 2b (cond + uncond) = 2 forwards,
                  no backward through either (x_t is stop-gradient);
                  then its critic update: generator rollout j_c + 1 no-grad forwards, critic 1 forward/backward
                  -> j_g + j_c + 4 forwards + 2 forward/backwards = j_g + j_c + 10 forward-equivalents (E 13);
  critic step:    generator rollout j_c + 1 no-grad forwards, critic 1 forward/backward -> j_c + 4 (E 5.5).
Full remat recomputes each forward/backward's forward once more: hardware FLOPs add 1 forward per
forward/backward (reported as HFU). The exits of the timed calls are read from the step metrics, so the
measured MFU uses their exact counts. XLA's own count (`compiled.cost_analysis()["flops"]`) is printed beside
it, but XLA counts a while-loop body once (the layer scan: one layer of 30; the rollout loop: one pass) and no
FLOPs in cuDNN custom calls, so it is far below the real count here; with `--unroll` on CPU it agrees with this
formula to ~4% per forward, ~14% per step incl. elementwise work (`tests/benchmarks/test_dmd_step_small.py`).

On GPU, `attn_impl="auto"` with the bf16 policy resolves to cuDNN flash attention
(`jax.nn.dot_product_attention(implementation="cudnn")`, `wanjax/ops/attention.py`); the count of cuDNN fMHA
calls in the compiled generator step is printed to prove it. MFU divides by `--peak-tflops` (989: H100/H200
SXM dense bf16). Prints a line per figure as soon as it is measured, then one JSON line.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402

# One card: let XLA's allocator use nearly all of it (the 0.75 default would cap an 80 GB H100 near 60 GB).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

GIB = 2**30
H100_USABLE_GIB = 78.0   # what one H100 80 GB leaves to a process (the device tool's "about 78 GiB")


class _Results(dict):
  """Prints each figure as soon as it is measured (a run cut short by a timeout still reports)."""

  def __setitem__(self, k, v):
    super().__setitem__(k, v)
    print(f"{k:>33}: {v:.6g}" if isinstance(v, float) else f"{k:>33}: {v}", flush=True)


# ------------------------------------------------------------------------------------------------ FLOPs

def forward_flops(cfg, tokens, batch):
  """Model FLOPs of one DiT forward (2 per MAC): blocks as in the module docstring plus patch embedding, text
  embedding MLP and head; elementwise work (norms, modulation, RoPE, softmax) is not counted."""
  d, m, s = cfg.dim, cfg.ffn_dim, cfg.text_len
  per_layer = (8 * tokens * d * d + 4 * tokens * tokens * d          # self q,k,v,o; QK^T and PV
               + 4 * tokens * d * d + 4 * s * d * d                  # cross q,o; k,v
               + 4 * tokens * s * d                                  # cross QK^T and PV
               + 4 * tokens * d * m)                                 # FFN
  patch = math.prod(cfg.patch_size)
  embed = (2 * tokens * cfg.in_dim * patch * d + 2 * s * (cfg.text_dim * d + d * d)
           + 2 * tokens * d * cfg.out_dim * patch)
  return batch * (cfg.num_layers * per_layer + embed)


def step_passes(with_generator, j_gen, j_crit):
  """(no-grad forwards, forward/backwards) of one counter step, in DiT calls at the batch size (docstring)."""
  fwd, train = j_crit + 1, 1                 # critic update: its rollout, critic forward/backward
  if with_generator:
    fwd += j_gen + 1 + 2                     # rollout prefix, critic fake score, teacher cond + uncond
    train += 1                               # generator exit step
  return fwd, train


def step_flops(f1, with_generator, j_gen, j_crit, remat):
  """(model FLOPs, hardware FLOPs incl. remat recompute) of one counter step; f1 = FLOPs of one forward."""
  fwd, train = step_passes(with_generator, j_gen, j_crit)
  model = f1 * (fwd + 3 * train)
  return model, model + (f1 * train if remat != "none" else 0)


# ------------------------------------------------------------------------------------------------ helpers

def tree_bytes(tree):
  import jax
  return sum(int(math.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def memory(dev):
  stats = dev.memory_stats() or {}
  return (stats.get("bytes_in_use", 0), stats.get("peak_bytes_in_use", 0), stats.get("bytes_limit", 0))


def xla_flops(compiled):
  try:
    ca = compiled.cost_analysis()
  except Exception:   # noqa: BLE001  (not every backend implements it)
    return 0.0
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  return float((ca or {}).get("flops", 0.0))


def temp_bytes(compiled):
  try:
    return int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:   # noqa: BLE001
    return 0


def build_config(args):
  """The trainer config the benchmark runs: dmd_bidirectional (or dmd_smoke with --small), batch, mesh, depth
  and attention overrides, random contexts instead of prompts."""
  from configs.train import dmd_bidirectional, dmd_smoke
  from train.distill import ROLES
  from wanjax.dit import config as dit_config

  c = dmd_smoke.get_config() if args.small else dmd_bidirectional.get_config(f"model={args.model}")
  c.data.batch_size = args.batch
  c.data.random_contexts = max(2 * args.batch, 2)
  c.mesh = args.mesh
  c.dmd.last_step_only = args.last_step_only
  if args.teacher_param_dtype:
    c.dmd.teacher_param_dtype = args.teacher_param_dtype
  if args.layers:
    # The trainer builds models from preset names: register the shallower variant under its own name
    # (this process only).
    base = c.models.generator.preset
    name = f"{base}_{args.layers}layers"
    dit_config.PRESETS[name] = dataclasses.replace(dit_config.get_config(base), num_layers=args.layers)
  for r in ROLES:
    if args.layers:
      c.models[r].preset = name
    if args.attn:
      c.models[r].attn_impl = args.attn
    if args.unroll:
      c.models[r].scan = False
  return c


def time_calls(fn, state, batches, n):
  """Runs `fn` n times on the donated state; returns (state, seconds, exits (j_gen, j_crit), finite flags)."""
  import jax
  secs, exits, finite = [], [], []
  for i in range(n):
    batch = batches[i % len(batches)]
    t0 = time.perf_counter()
    state, m = fn(state, batch)
    jax.block_until_ready((state, m))
    secs.append(time.perf_counter() - t0)
    exits.append((int(m.get("rollout/exit_generator", -1)), int(m["rollout/exit_critic"])))
    finite.append(bool(m["finite"]))
  return state, secs, exits, finite


# ------------------------------------------------------------------------------------------------ main

def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="t2v_1_3b", help="DiT preset of all three roles")
  p.add_argument("--layers", type=int, default=0, help="override num_layers (0 = preset, 30 for T2V-1.3B)")
  p.add_argument("--batch", type=int, default=1, help="global batch")
  p.add_argument("--iters", type=int, default=2,
                 help="timed calls per step kind after the first (2: the whole run fits ~100 s on an H100)")
  p.add_argument("--attn", default="", help="attention impl override (default: the config's, 'auto')")
  p.add_argument("--mesh", default="fsdp=1", help="mesh spec (default one device)")
  p.add_argument("--unroll", action="store_true",
                 help="unrolled layers instead of scan (XLA's FLOP count then sees every layer; slow compile)")
  p.add_argument("--last-step-only", action="store_true", help="fixed exit j = N-1 (worst case) instead of random")
  p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100/H200 SXM)")
  p.add_argument("--small", action="store_true", help="dmd_smoke's tiny models on CPU (smoke test)")
  p.add_argument("--teacher-param-dtype", default="", choices=("", "bf16_kernels", "float32", "bfloat16"),
                 help="how the frozen teacher is stored (the config's dmd.teacher_param_dtype; default: the config's, "
                      "bf16_kernels: its bf16 matmuls' kernels in bf16, same outputs, -2.6 GiB at 1.3B against "
                      "float32; bfloat16: every param)")
  args = p.parse_args()
  cli.apply_small(p, args, {}, preset="model", runs="dmd_smoke's tiny models")

  import jax
  import numpy as np
  from train import distill
  from wanjax import sharding as shd
  from wanjax.ops.attention import resolve_impl
  from wanjax.precision import get_policy

  c = build_config(args)
  mesh = shd.make_mesh(c.mesh)
  rules = shd.override_rules(c.sharding_overrides)
  dev = mesh.devices.flat[0]
  r = _Results()
  r["bench"] = "dmd_step"
  r["device"] = dev.device_kind
  r["mesh_devices"] = int(mesh.devices.size)

  t0 = time.perf_counter()
  setup = distill.build_dmd(c, "", mesh, rules)
  cfg = setup.built["generator"].cfg
  gm = c.models.generator
  f, h, w = c.data.latent_shape
  tokens = f * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
  r["model"] = f"{gm.preset} ({cfg.num_layers} layers, dim {cfg.dim})"
  r["precision_remat_attn"] = f"{gm.precision} / {gm.remat} / {gm.attn_impl}"
  r["attn_resolved"] = resolve_impl(gm.attn_impl, get_policy(gm.precision).compute_dtype, False, cfg.head_dim)
  r["latent_tokens_batch"] = f"{f}x{h}x{w} / {tokens} / {c.data.batch_size}"
  r["critic_per_generator"] = setup.ratio
  r["teacher_param_dtype"] = c.dmd.get("teacher_param_dtype", "bf16_kernels")

  # State bytes by part, from the abstract pytree (nothing allocated yet).
  a = setup.abstract_state
  parts = {"generator_params": a.generator.params, "generator_opt": a.generator.opt_state,
           "generator_ema": a.generator.ema, "critic_params": a.critic.params, "critic_opt": a.critic.opt_state,
           "teacher": a.teacher}
  state_gib = {k: tree_bytes(v) / GIB for k, v in parts.items()}
  for k, v in state_gib.items():
    r[f"state_{k}_gib"] = v
  r["state_total_gib"] = sum(state_gib.values())

  # FLOPs: one forward, and the steps at the expected exits.
  f1 = forward_flops(cfg, tokens, c.data.batch_size)
  n = len(setup.settings.timesteps)
  j_exp = float(n - 1) if args.last_step_only else (n - 1) / 2
  remat = gm.remat
  gen_exp = step_flops(f1, True, j_exp, j_exp, remat)[0]
  crit_exp = step_flops(f1, False, 0, j_exp, remat)[0]
  peak_flops = args.peak_tflops * 1e12
  r["forward_tflops"] = f1 / 1e12
  r["gen_step_model_tflops_expected"] = gen_exp / 1e12
  r["critic_step_model_tflops_expected"] = crit_exp / 1e12

  def util(flops, secs):
    return sum(flops) / sum(secs) / peak_flops

  # The generator step first (the headline figures), then the critic step: a run cut short still reports.
  with shd.activate(mesh, rules):
    state = setup.create()
    jax.block_until_ready(state)
    r["build_create_s"] = time.perf_counter() - t0
    in_use, peak, limit = memory(dev)
    r["after_state_in_use_gib"] = in_use / GIB
    r["after_state_peak_gib"] = peak / GIB
    r["bytes_limit_gib"] = limit / GIB
    batches = [setup.batch_for(s) for s in range(max(args.iters, 1) + 1)]

    def measure(prefix, step, state, flops_of):
      """Compile, first call and `--iters` timed calls of one jitted step; records `<prefix>_*` figures."""
      t0 = time.perf_counter()
      compiled = step.lower(state, batches[0]).compile()
      r[f"{prefix}_compile_s"] = time.perf_counter() - t0
      r[f"{prefix}_temp_gib"] = temp_bytes(compiled) / GIB
      r[f"xla_flops_{prefix}_step"] = xla_flops(compiled)
      state, first, _, _ = time_calls(compiled, state, batches, 1)
      r[f"{prefix}_first_call_s"] = first[0]
      state, secs, exits, ok = time_calls(compiled, state, batches, args.iters)
      r[f"{prefix}_step_s"] = float(np.median(secs))
      r[f"{prefix}_step_s_all"] = [round(s, 4) for s in secs]
      meas = [flops_of(jg, jc) for jg, jc in exits]
      r[f"{prefix}_mfu"] = util([m for m, _ in meas], secs)
      r[f"{prefix}_hfu"] = util([hw for _, hw in meas], secs)
      return state, compiled, exits, ok

    state, gen_c, gen_exits, gen_ok = measure("gen", setup.gen_step, state,
                                              lambda jg, jc: step_flops(f1, True, jg, jc, remat))
    r["cudnn_fmha_calls_in_gen_step"] = gen_c.as_text().count("__cudnn$fmha")
    r["gen_exits_timed"] = gen_exits
    r["after_gen_peak_gib"] = memory(dev)[1] / GIB
    state, _, crit_exits, crit_ok = measure("critic", setup.critic_step, state,
                                            lambda _, jc: step_flops(f1, False, 0, jc, remat))
    r["critic_exits_timed"] = [jc for _, jc in crit_exits]
    jax.block_until_ready(state)
  peak = memory(dev)[1]
  r["peak_gib"] = peak / GIB

  it_s = r["gen_step_s"] + (setup.ratio - 1) * r["critic_step_s"]
  r["train_iter_s"] = it_s   # 1 generator update + `ratio` critic updates
  r["train_iter_mfu_expected_exits"] = (gen_exp + (setup.ratio - 1) * crit_exp) / it_s / peak_flops
  r["finite"] = all(gen_ok) and all(crit_ok)
  if dev.platform == "gpu":
    r["fits_one_h100"] = peak / GIB <= H100_USABLE_GIB
  print(json.dumps(dict(r)), flush=True)


if __name__ == "__main__":
  cli.run(main)
