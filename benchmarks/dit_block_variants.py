"""One whole DiT block timed under formulations of its matmul epilogues and under XLA flag sets, side by side.

  python benchmarks/dit_block_variants.py                    # T2V-1.3B block at 32,760 tokens, bf16
  python benchmarks/dit_block_variants.py --model t2v_14b
  python benchmarks/dit_block_variants.py --small            # CPU smoke run (tiny config, 3x4x6 latent)
  python benchmarks/dit_block_variants.py --flag-sets default --variants current,bf16_bias

`benchmarks/dit_layer_breakdown.py` puts ~7 ms of the 19 ms 1.3B block on an H100 outside self-attention, where
the block's matmuls alone need ~4 ms at the card's bf16 matmul rate: the rest is elementwise work and the
matmul outputs that the epilogues (bias, GELU, casts) read back. Each code variant below changes only how the
block's bf16 `Dense` layers and FFN finish (the parameters and inputs are the same):

  current        what the model does (`wanjax.nn.matmul_output_dtype`): a bf16 matmul accumulates in float32 and
                 returns bf16; the bias is added in float32 and the sum rounded to bf16 again; GELU is evaluated
                 in float32 on the bf16 fc1 output and rounded
  f32_dots       the matmul returns float32, the bias is added in float32 and the sum rounded to bf16 once (the
                 reference's rounding under autocast; the model's form until 2026-11-27, 1.08x slower on an H100)
  bf16_bias      the bias is added in bf16 (the form cuBLAS can fold into its epilogue)
  gelu_bf16      bf16_bias, and the FFN's tanh-GELU evaluated on the bf16 values directly (the form a cuBLASLt
                 GELU+bias epilogue can take)
  halves         the current epilogues; q/k RoPE on contiguous halves (`dit_qkv_variants.py`'s "halves": q/k
                 channels permuted per head, which leaves q.k and so the block output unchanged up to rounding)
  rope_flip      the current epilogues; RoPE as `x*cos + pairswap(x)*signed sin` (`apply_rope_flip`: the same
                 values, no concatenate; the H100 trace shows the current RoPE as a separate 0.125 ms
                 concatenate fusion per q and k after a 0.105 ms RMSNorm fusion that writes float32)

Each XLA flag set (`--flag-sets`) runs in its own subprocess (XLA reads XLA_FLAGS once, at start-up):

  default        no extra flags
  cublaslt       --xla_gpu_enable_cublaslt=true (cuBLASLt, whose epilogues include bias and GELU)
  no_triton_gemm --xla_gpu_enable_triton_gemm=false (cuBLAS for every matmul, no Triton GEMM fusions)

For each (flag set, variant): milliseconds per block (median of `--iters`), the speed-up over (default, current),
and the relative L2 difference of the block output from the current formulation's under the same flags (a bf16
rounding difference is ~1e-3; the halves permutation should be ~1e-6 or less). A flag set whose child fails
(e.g. a flag this XLA does not know) is reported with its stderr and the others still run.
"""

import argparse
import contextlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402
from benchmarks.dit_layer_breakdown import add_block_flags, block_inputs, block_setup, check_block_flags  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402

VARIANTS = ("current", "f32_dots", "bf16_bias", "gelu_bf16", "halves", "rope_flip")
FLAG_SETS = {
    "default": "",
    "cublaslt": "--xla_gpu_enable_cublaslt=true",
    "no_triton_gemm": "--xla_gpu_enable_triton_gemm=false",
}
# Variant -> (Dense epilogue, GELU dtype, RoPE on halves).
_FORMS = {   # variant -> (Dense epilogue, GELU dtype, q/k layout: "pairs" | "halves" | "flip")
    "current": ("model", "f32", "pairs"),
    "f32_dots": ("f32", "f32", "pairs"),
    "bf16_bias": ("bf16_bias", "f32", "pairs"),
    "gelu_bf16": ("bf16_bias", "bf16", "pairs"),
    "halves": ("model", "f32", "halves"),
    "rope_flip": ("model", "f32", "flip"),
}


def apply_rope_flip(x, cos, sin):
  """`wanjax.dit.rope.apply_rope` without the stack of its two outputs (which XLA emits as a concatenate that it
  does not fuse with the q/k RMSNorm): `x * [c0, c0, c1, c1, ...] + pairswap(x) * [-s0, s0, -s1, s1, ...]`, where
  pairswap reverses each channel pair. The same products and sums (a - b = a + (-b), a + b = b + a), so the same
  float32 values up to a compiler's multiply-add contraction."""
  import jax.numpy as jnp
  b, l, n, k = x.shape
  if cos.ndim == 2:
    cos, sin = cos[None], sin[None]
  c = jnp.repeat(cos, 2, axis=-1)[:, :, None, :]                                   # [1|B, L, 1, K]
  sg = jnp.stack([-sin, sin], axis=-1).reshape(sin.shape[:-1] + (k,))[:, :, None, :]
  xf = x.astype(jnp.float32)
  swapped = xf.reshape(b, l, n, k // 2, 2)[..., ::-1].reshape(b, l, n, k)
  return xf * c + swapped * sg


def dense_call(epilogue):
  """A replacement `Dense.__call__` for the given epilogue ("model" = the model's own)."""
  import jax.numpy as jnp
  from wanjax.nn import Dense
  original = Dense.__call__
  if epilogue == "model":
    return original

  def call(self, x):
    cd = self.compute_dtype
    if cd == jnp.float32 or getattr(self, "kernel_scale", None) is not None:
      return original(self, x)
    f32 = epilogue == "f32"
    y = jnp.einsum("...i,io->...o", x.astype(cd), self.kernel[...].astype(cd),
                   preferred_element_type=jnp.float32 if f32 else cd)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32 if f32 else cd)
    return y.astype(self.out_dtype or cd)

  return call


def mlp_call(gelu_dtype):
  """A replacement `MLP.__call__` evaluating the activation in `gelu_dtype` ("f32" = the model's own)."""
  from jax.ad_checkpoint import checkpoint_name
  from wanjax.dit import layers
  original = layers.MLP.__call__
  if gelu_dtype == "f32":
    return original

  def call(self, x):
    h = layers._ACTS[self.act](self.fc1(x))
    if self.tag:
      h = checkpoint_name(h, self.tag)
    return self.fc2(h)

  return call


@contextlib.contextmanager
def formulation(name):
  """Patches `Dense`, `MLP` and `SelfAttention.qkv` to variant `name` while tracing inside the block."""
  from benchmarks.dit_qkv_variants import qkv_variant
  from wanjax.dit import layers
  from wanjax.dit.attention import SelfAttention
  from wanjax.nn import Dense
  from wanjax.dit import attention as dit_attention
  epilogue, gelu, layout = _FORMS[name]
  saved = (Dense.__call__, layers.MLP.__call__, SelfAttention.qkv, dit_attention.apply_rope)
  Dense.__call__ = dense_call(epilogue)
  layers.MLP.__call__ = mlp_call(gelu)
  if layout == "halves":
    SelfAttention.qkv = lambda self, x, cos, sin: qkv_variant(self, x, cos, sin, halves=True)
  elif layout == "flip":
    dit_attention.apply_rope = apply_rope_flip
  try:
    yield
  finally:
    Dense.__call__, layers.MLP.__call__, SelfAttention.qkv, dit_attention.apply_rope = saved


def run_variants(args):
  """This process's flag set: every variant of `args.variants`, timed."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from benchmarks.dit_qkv_variants import random_block, rel_l2
  from wanjax import precision

  cfg, grid = block_setup(args.model, args.small)
  L, D = grid[0] * grid[1] * grid[2], cfg.dim
  policy = precision.get_policy("bf16")
  t0 = time.perf_counter()
  graphdef, state = random_block(cfg, policy, args.attn)
  init_s = time.perf_counter() - t0
  x, e0, ctx, cos, sin = block_inputs(cfg, grid, policy.compute_dtype)

  def make_block():   # a new function per variant: jax.jit caches traces by function
    return lambda st, x: nnx.merge(graphdef, st)(x, e0, ctx, None, cos, sin)

  rows, ref = {}, None
  for name in args.variants:
    block = make_block()
    with formulation(name):
      t1 = time.perf_counter()
      compiled = jax.jit(block).lower(state, x).compile()
      compile_s = time.perf_counter() - t1
    ms = median_s(lambda: jax.block_until_ready(compiled(state, x)), args.iters) * 1e3
    out = compiled(state, x)
    if ref is None:
      ref = out
    rows[name] = dict(ms=ms, compile_s=compile_s, finite=bool(jnp.isfinite(out).all()),
                      rel_diff=float(rel_l2(out, ref)))
    del out
  return dict(device=jax.devices()[0].device_kind, tokens=L, dim=D, init_s=init_s,
              xla_flags=os.environ.get("XLA_FLAGS", ""), variants=rows, reference_variant=args.variants[0])


def child_cmd(args):
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model, "--attn", args.attn,
         "--iters", str(args.iters), "--variants", ",".join(args.variants)]
  return cmd + (["--small"] if args.small else [])


def run_flag_sets(args):
  """Each flag set in a subprocess with its flags appended to XLA_FLAGS; returns the combined result."""
  import subprocess
  sets, failed, device, tokens = {}, [], None, None
  base_flags = os.environ.get("XLA_FLAGS", "")
  for name in args.flag_sets:
    env = dict(os.environ, XLA_FLAGS=f"{base_flags} {FLAG_SETS[name]}".strip(), XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run(child_cmd(args), capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
      cli.child_failed(f"flag set {name} ({FLAG_SETS[name] or 'no flags'})", proc)
      failed.append(f"flag set {name}")
      continue
    r = json.loads(lines[-1][len("RESULT "):])
    device, tokens = r["device"], r["tokens"]
    sets[name] = r
  base = None
  if sets:
    first = sets.get("default") or next(iter(sets.values()))
    base = first["variants"][args.variants[0]]["ms"]
    for r in sets.values():
      for row in r["variants"].values():
        row["speedup"] = base / row["ms"]
  return dict(bench="dit_block_variants", model=args.model, small=args.small, device=device, tokens=tokens,
              attn=args.attn, baseline_ms=base, flag_sets=sets), failed


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_block_flags(p)
  p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}; the first "
                 "is the reference of the rel_diff column")
  p.add_argument("--flag-sets", default=",".join(FLAG_SETS), help=f"comma list of {', '.join(FLAG_SETS)}")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if not args.child:   # a child gets the parent's checked flags (with --model set by --small)
    check_block_flags(p, args)
  for flag, text, known in (("--variants", args.variants, VARIANTS), ("--flag-sets", args.flag_sets, FLAG_SETS)):
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in known]
    if not names or bad:
      p.error(f"{flag}: unknown {', '.join(map(repr, bad)) or 'empty list'}; valid: {', '.join(known)}")
    setattr(args, flag[2:].replace("-", "_"), names)
  from wanjax.dit.config import get_config
  get_config(args.model)    # an unknown preset fails here, once, not in every child
  if args.child:
    print("RESULT " + json.dumps(run_variants(args)), flush=True)
    return
  r, failed = run_flag_sets(args)
  if r["flag_sets"]:
    print(f"{r['model']} block on {r['device']}: {r['tokens']} tokens, attention {r['attn']}; speed-up against "
          f"{args.variants[0]} with {'default' if 'default' in r['flag_sets'] else 'the first'} flags "
          f"({r['baseline_ms']:.3f} ms)")
  for name, s in r["flag_sets"].items():
    for v, row in s["variants"].items():
      print(f"  {name:>14} {v:>17}: {row['ms']:9.3f} ms  x{row['speedup']:5.3f}  rel diff {row['rel_diff']:.2e}"
            f"  compile {row['compile_s']:5.1f} s  finite {row['finite']}")
  print(json.dumps(r))
  cli.exit_if_failed(failed)


if __name__ == "__main__":
  cli.run(main)
