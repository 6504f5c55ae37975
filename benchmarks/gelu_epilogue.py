"""Can XLA fold the FFN's bias + tanh-GELU into the fc1 GEMM? Forms of `gelu(x @ W1 + b1)` compiled and timed.

  python benchmarks/gelu_epilogue.py                 # T2V-1.3B fc1: [32760, 1536] x [1536, 8960], bf16
  python benchmarks/gelu_epilogue.py --dim 5120 --hidden 13824     # 14B
  python benchmarks/gelu_epilogue.py --small         # CPU run (no cuBLAS: no epilogues, the checks only)

The H100 trace of a 1.3B block (`docs/bench/h100_dit_layer_profile_1_3b.txt`) has the FFN's bias + GELU as its own
kernel over `[32760, 8960]` (0.51 ms of a 16.06 ms block), between two GEMMs that run near the card's peak. cuBLASLt
can apply a bias and a tanh-GELU in the GEMM's epilogue; XLA's GEMM rewriter uses it when the HLO matches its
pattern. The block variant "gelu_bf16" (`dit_block_variants.py`) gained nothing, so its form did not match. Forms:

  model          what `wanjax.dit.layers.MLP` does: the matmul writes bf16, the bias is added in float32 and
                 rounded, GELU is evaluated in float32 and rounded
  bf16_jax       bias added in bf16, `jax.nn.gelu(approximate=True)` on bf16 (what "gelu_bf16" was)
  bf16_formula   bias added in bf16, then `x * (0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x*x*x))))` spelled
                 out in bf16 with a plain cube (jax's `x ** 3` is an integer_pow)
  f32_formula    the matmul writes float32, bias and the spelled-out GELU in float32, then rounded to bf16
  bf16_nobias    the GELU of the bf16 product alone (the bias folded elsewhere): does a GELU-only epilogue fire?

For each: milliseconds (median of `--iters`), the epilogue named in the compiled HLO's GEMM backend config (e.g.
BIAS_GELU; "-" where no GEMM custom call carries one), the number of non-GEMM kernels' worth of fusions left in
the program, and the relative L2 difference from "model".
"""

import argparse
import json
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402

FORMS = ("model", "bf16_jax", "bf16_formula", "f32_formula", "bf16_nobias")
def gelu_formula(x):
  """tanh-GELU spelled out with a plain cube, in x's dtype: the model's own spelling of the "bf16_formula" FFN form
  (`wanjax.dit.layers.gelu_tanh_formula`), so that what this finds holds for the model."""
  from wanjax.dit.layers import gelu_tanh_formula
  return gelu_tanh_formula(x)


def form_fn(name):
  """(x [T, D] bf16, w [D, H] bf16, b [H] float32) -> [T, H] bf16 for form `name`."""
  import jax
  import jax.numpy as jnp
  bf16, f32 = jnp.bfloat16, jnp.float32

  def dot(x, w, out):
    return jnp.einsum("td,dh->th", x, w, preferred_element_type=out)

  if name == "model":
    def fn(x, w, b):
      h = (dot(x, w, bf16).astype(f32) + b).astype(bf16)
      return jax.nn.gelu(h.astype(f32), approximate=True).astype(bf16)
  elif name == "bf16_jax":
    def fn(x, w, b):
      return jax.nn.gelu(dot(x, w, bf16) + b.astype(bf16), approximate=True)
  elif name == "bf16_formula":
    def fn(x, w, b):
      return gelu_formula(dot(x, w, bf16) + b.astype(bf16))
  elif name == "f32_formula":
    def fn(x, w, b):
      return gelu_formula(dot(x, w, f32) + b).astype(bf16)
  elif name == "bf16_nobias":
    def fn(x, w, b):
      return gelu_formula(dot(x, w, bf16))
  else:
    raise ValueError(name)
  return fn


def epilogues(hlo_text):
  """The epilogues named in the GEMM custom calls' backend configs of an HLO text (e.g. ["BIAS_GELU"])."""
  return sorted(set(re.findall(r'"epilogue":"([A-Z_]+)"', hlo_text)))


def fusion_count(hlo_text):
  """Fusion instructions in the entry computation (kernels other than library calls)."""
  return len(re.findall(r"^\s*(?:ROOT\s+)?%\S+ = \S+ fusion\(", hlo_text, flags=re.M))


def run(args):
  import jax
  import jax.numpy as jnp
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (args.tokens, args.dim), jnp.float32).astype(jnp.bfloat16)
  w = (jax.random.normal(keys[1], (args.dim, args.hidden), jnp.float32) / math.sqrt(args.dim)).astype(jnp.bfloat16)
  b = jax.random.normal(keys[2], (args.hidden,), jnp.float32) * 0.3
  flop = 2 * args.tokens * args.dim * args.hidden
  rows, ref = {}, None
  for name in args.forms:
    compiled = jax.jit(form_fn(name)).lower(x, w, b).compile()
    hlo = compiled.as_text()
    ms = median_s(lambda: jax.block_until_ready(compiled(x, w, b)), args.iters) * 1e3
    out = compiled(x, w, b)
    if ref is None:
      ref = out
    diff = float(jnp.linalg.norm((out.astype(jnp.float32) - ref.astype(jnp.float32)))
                 / jnp.linalg.norm(ref.astype(jnp.float32)))
    rows[name] = dict(ms=ms, tflops=flop / (ms / 1e3) / 1e12, epilogues=epilogues(hlo), fusions=fusion_count(hlo),
                      rel_diff=diff, finite=bool(jnp.isfinite(out.astype(jnp.float32)).all()))
  return dict(bench="gelu_epilogue", device=jax.devices()[0].device_kind, tokens=args.tokens, dim=args.dim,
              hidden=args.hidden, xla_flags=os.environ.get("XLA_FLAGS", ""), forms=rows)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tokens", type=int, default=32760)
  p.add_argument("--dim", type=int, default=1536)
  p.add_argument("--hidden", type=int, default=8960)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--forms", default=",".join(FORMS), help=f"comma list of {', '.join(FORMS)}")
  p.add_argument("--small", action="store_true", help="CPU run: 256 tokens, 64 -> 160")
  args = p.parse_args()
  cli.apply_small(p, args, dict(tokens=256, dim=64, hidden=160, iters=2))
  names = [f.strip() for f in args.forms.split(",") if f.strip()]
  bad = [f for f in names if f not in FORMS]
  if not names or bad:
    p.error(f"--forms: unknown {', '.join(map(repr, bad)) or 'empty list'}; valid: {', '.join(FORMS)}")
  args.forms = names
  if min(args.tokens, args.dim, args.hidden, args.iters) < 1:
    p.error("--tokens, --dim, --hidden and --iters must be >= 1")
  r = run(args)
  print(f"fc1 + bias + tanh-GELU on {r['device']}: [{r['tokens']}, {r['dim']}] x [{r['dim']}, {r['hidden']}] bf16")
  for name, row in r["forms"].items():
    print(f"  {name:>13}: {row['ms']:8.3f} ms  {row['tflops']:6.1f} TFLOP/s  epilogue "
          f"{','.join(row['epilogues']) or '-':<12} fusions {row['fusions']:2d}  rel diff {row['rel_diff']:.2e}  "
          f"finite {row['finite']}")
  print(json.dumps(r))


if __name__ == "__main__":
  cli.run(main)
