"""`benchmarks/dmd_step.py`: its analytic FLOP counts against XLA's own count, and the --small CPU run end to end.

XLA's cost analysis counts a while-loop body once, so the checks use unrolled layers (`scan=False`) and read the
rollout loops (dynamic trip count) as one pass each (exit index j = 1 in the benchmark's formula). XLA also
counts elementwise work (norms, RoPE, softmax, AdamW) that the model-FLOP count leaves out, hence a ratio
slightly above 1 rather than equality.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from wanjax.dit import config as dit_config
from wanjax.dit.model import WanDiT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "dmd_step.py")
# benchmarks/ is a folder of scripts, not a package: load the script by path.
_spec = importlib.util.spec_from_file_location("dmd_step_bench", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
# Wide enough that matmuls dominate; mutually different sizes.
CFG = dit_config.DiTConfig(dim=128, ffn_dim=192, num_heads=2, num_layers=2, text_dim=40, text_len=8)
LATENT = (3, 8, 10)                       # -> 3 * 4 * 5 = 60 tokens
TOKENS = 60
FORWARD_EXCESS = (0.0, 0.08)              # XLA / analytic - 1 for one forward (measured 0.037)
STEP_EXCESS = (0.0, 0.25)                 # same for a whole step incl. backward and AdamW (measured 0.14)
STEP_RATIO_AGREEMENT = 0.03               # gen and critic ratios agree (one pass miscounted moves gen by ~0.09)


def test_forward_flops_match_xla():
  model = WanDiT(CFG, policy="float32", rngs=nnx.Rngs(0), scan=False)
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))
  x = jnp.zeros((1,) + LATENT + (CFG.in_dim,))
  ctx = jnp.zeros((1, CFG.text_len, CFG.text_dim))
  xla = bench.xla_flops(fwd.lower(state, x, jnp.ones((1,)), ctx).compile())
  analytic = bench.forward_flops(CFG, TOKENS, 1)
  assert FORWARD_EXCESS[0] <= xla / analytic - 1 <= FORWARD_EXCESS[1], (xla, analytic)
  assert bench.forward_flops(CFG, TOKENS, 3) == 3 * analytic


@pytest.mark.slow
def test_step_pass_counts_match_xla():
  """The DiT passes per generator / critic step written in the benchmark's docstring, checked through XLA."""
  from configs.train import dmd_smoke
  from train import distill
  from wanjax import sharding as shd

  dit_config.PRESETS.setdefault("test_flopcheck", CFG)
  c = dmd_smoke.get_config()
  for r in distill.ROLES:
    c.models[r].preset, c.models[r].scan = "test_flopcheck", False
  c.data.batch_size, c.data.latent_shape, c.mesh = 1, LATENT, "fsdp=1"
  mesh = shd.make_mesh(c.mesh)
  setup = distill.build_dmd(c, "", mesh, shd.RULES)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          setup.abstract_state, setup.shardings)
  with shd.activate(mesh, shd.RULES):
    batch = setup.batch_for(0)
    gen = bench.xla_flops(setup.gen_step.lower(abstract, batch).compile())
    crit = bench.xla_flops(setup.critic_step.lower(abstract, batch).compile())
  f1 = bench.forward_flops(CFG, TOKENS, 1)
  gen_ratio = gen / bench.step_flops(f1, True, 1, 1, "none")[0]
  crit_ratio = crit / bench.step_flops(f1, False, 0, 1, "none")[0]
  for ratio in (gen_ratio, crit_ratio):
    assert STEP_EXCESS[0] <= ratio - 1 <= STEP_EXCESS[1], (gen_ratio, crit_ratio)
  assert abs(gen_ratio - crit_ratio) <= STEP_RATIO_AGREEMENT, (gen_ratio, crit_ratio)


def test_step_flops_bookkeeping():
  # Expected exits E[j] = 1.5 of N = 4: 13 and 5.5 forward-equivalents; full remat adds a forward per backward.
  assert bench.step_flops(10, True, 1.5, 1.5, "none") == (130, 130)
  assert bench.step_flops(10, False, 0, 1.5, "full") == (55, 65)
  assert bench.step_flops(10, True, 3, 0, "full") == (130, 150)


@pytest.mark.slow
def test_small_run_reports_json():
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, SCRIPT, "--small"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ("gen_compile_s", "critic_compile_s", "gen_first_call_s", "critic_first_call_s", "gen_step_s",
              "critic_step_s", "train_iter_s", "build_create_s"):
    assert out[key] > 0, key
  for key in ("gen_mfu", "critic_mfu", "gen_hfu", "critic_hfu", "forward_tflops", "state_total_gib",
              "xla_flops_gen_step", "xla_flops_critic_step"):
    assert out[key] > 0, key
  assert out["mesh_devices"] == 1 and out["critic_per_generator"] == 3 and out["finite"] is True
  assert out["attn_resolved"] == "xla" and out["cudnn_fmha_calls_in_gen_step"] == 0
  parts = [k for k in out if k.startswith("state_") and k.endswith("_gib") and k != "state_total_gib"]
  assert len(parts) == 6
  assert abs(sum(out[k] for k in parts) - out["state_total_gib"]) <= 1e-9
  # Generator params, its EMA, the critic's and the teacher are the same tiny DiT; AdamW holds two moments.
  assert out["state_generator_params_gib"] == out["state_teacher_gib"] == out["state_generator_ema_gib"]
  assert 2 * out["state_critic_params_gib"] <= out["state_critic_opt_gib"] <= 2.01 * out["state_critic_params_gib"]
  assert len(out["gen_exits_timed"]) == len(out["gen_step_s_all"]) == 2
  assert all(0 <= j < 4 for pair in out["gen_exits_timed"] for j in pair)
  assert out["train_iter_s"] == pytest.approx(out["gen_step_s"] + 2 * out["critic_step_s"])


def test_teacher_param_dtype_flag_halves_the_teacher():
  """`--teacher-param-dtype bfloat16` reaches the trainer: the teacher's state is half the float32 one."""
  import argparse
  from train import distill
  from wanjax import sharding as shd

  sizes = {}
  for name in ("", "bfloat16"):
    args = argparse.Namespace(small=True, model="", layers=0, batch=1, mesh="fsdp=1", last_step_only=False,
                              attn="", unroll=False, teacher_param_dtype=name)
    c = bench.build_config(args)
    setup = distill.build_dmd(c, "", shd.make_mesh(c.mesh), shd.RULES)
    sizes[name] = (bench.tree_bytes(setup.abstract_state.teacher),
                   bench.tree_bytes(setup.abstract_state.generator.params))
  (t32, g32), (t16, g16) = sizes[""], sizes["bfloat16"]
  assert t32 == g32 and g16 == g32          # default bf16_kernels: the small models compute in float32, so no
                                            # kernel is read cast and the teacher stays float32; generator untouched
  assert t16 < 0.51 * t32                   # floating params halve (non-float leaves, if any, stay)
