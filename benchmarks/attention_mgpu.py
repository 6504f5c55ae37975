"""Self-attention at Wan's 32,760 tokens: cuDNN (through jax) against JAX's Pallas Mosaic-GPU flash-attention kernel
for Hopper, and torch SDPA in the same run.

  python benchmarks/attention_mgpu.py                     # [1, 32760, 12, 128] and [1, 32760, 40, 128], bf16
  python benchmarks/attention_mgpu.py --heads 12 --block-kv 64,128
  python benchmarks/attention_mgpu.py --small             # CPU run: the tail merge against plain attention

The profile of a 1.3B block (`dit_layer_breakdown.py --profile`) puts the cuDNN attention kernel at 10.45 ms of a
16.06 ms block on an H100. The Pallas kernel (`wanjax/ops/pallas_gpu.py`: `jax.experimental.pallas.ops.gpu.
attention_mgpu` behind a split-tail wrapper, since 32,760 is not a multiple of its blocks) is the "Pallas kernel if
faster" of the performance issue, and `attention(impl="pallas_gpu")` once this says so.

Per shape: milliseconds per call (median of `--iters` samples of `--repeat` calls chained in one program, so
that a single call's dispatch and wait, ~0.9 ms on an H100, is not counted) and TFLOP/s (4*L*S*N*K) of jax
cuDNN, of the Pallas kernel alone on the key/query counts it accepts (32,768, no tail: its raw speed), of the
split-tail Pallas attention at the real length, and of torch SDPA; the relative L2 difference of the split-tail output from cuDNN's. A Pallas
configuration that does not compile or run (shared memory, a CUDA version) is reported and skipped.
"""

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402


def rel_l2(a, b):
  import jax.numpy as jnp
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def reference_main(q, k, v):
  """The kernel's contract in plain float32 attention (the CPU stand-in): (out in q's dtype, natural-log lse)."""
  from wanjax.ops.pallas_gpu import softmax_with_lse
  out, lse = softmax_with_lse(q, k, v)
  return out.astype(q.dtype), lse


def run_shape(args, heads, on_gpu):
  import jax
  import jax.numpy as jnp
  from wanjax.ops import pallas_gpu as pg
  L, kd = args.tokens, args.head_dim
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (1, L, heads, kd), jnp.float32).astype(jnp.bfloat16) for kk in keys)
  flop = 4 * L * L * heads * kd
  row = dict(heads=heads, tokens=L, head_dim=kd, gflop=flop / 1e9)

  def timed(name, fn, *xs):
    """ms per call of `fn(q, k, v)`: `--repeat` calls chained in one program (each output is the next query),
    so that no per-call dispatch and wait is counted; returns the first call's output (one compile for both)."""
    def chain(q, k, v):
      first = fn(q, k, v)
      return first, jax.lax.fori_loop(1, args.repeat, lambda i, a: fn(a, k, v), first)
    try:
      compiled = jax.jit(chain).lower(*xs).compile()
      ms = median_s(lambda: jax.block_until_ready(compiled(*xs)), args.iters) * 1e3 / args.repeat
      row[name] = dict(ms=ms, tflops=4 * xs[0].shape[1] * xs[1].shape[1] * heads * kd / (ms / 1e3) / 1e12)
      return compiled(*xs)[0]
    except Exception as e:  # noqa: BLE001 - a configuration the kernel refuses is a result, not a failure
      row[name] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
      return None

  if on_gpu:
    ref = timed("jax_cudnn", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"), q, k, v)
  else:
    ref = timed("jax_xla", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"), q, k, v)
  for bkv in args.block_kv:
    tag = f"{'pallas' if on_gpu else 'reference'}_bq{args.block_q}_bkv{bkv}"
    main = pg.mosaic_main(args.block_q, bkv, args.steps) if on_gpu else reference_main
    if on_gpu:   # the kernel alone on a length it accepts (its raw speed)
      n = -(-L // math.lcm(2 * args.block_q, bkv)) * math.lcm(2 * args.block_q, bkv)
      qa, ka, va = (jnp.pad(a, ((0, 0), (0, n - L), (0, 0), (0, 0))) for a in (q, k, v))
      timed(f"{tag}_kernel_{n}", lambda q, k, v: main(q, k, v)[0], qa, ka, va)
    out = timed(f"{tag}_split_tail", lambda q, k, v: pg.pallas_gpu_attention(
        q, k, v, block_q=args.block_q, block_kv=bkv, steps=args.steps, main=main), q, k, v)
    if out is not None and ref is not None:
      row[f"{tag}_split_tail"]["rel_diff_vs_reference"] = rel_l2(out, ref)
  if on_gpu and args.torch:
    row["torch_sdpa"] = torch_sdpa(L, heads, kd, args.iters, args.repeat)
  return row


def torch_sdpa(L, heads, kd, iters, repeat):
  """torch SDPA (default backend choice), `repeat` calls back to back per timed sample, as `timed` chains them."""
  try:
    import torch
  except ImportError:
    return dict(error="torch not installed")
  q, k, v = (torch.randn(1, heads, L, kd, device="cuda", dtype=torch.bfloat16) for _ in range(3))
  f = torch.nn.functional.scaled_dot_product_attention

  def chain():
    a = q
    for _ in range(repeat):
      a = f(a, k, v)
    return a
  ms = median_s(chain, iters, sync=torch.cuda.synchronize) * 1e3 / repeat
  return dict(ms=ms, tflops=4 * L * L * heads * kd / (ms / 1e3) / 1e12)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--heads", default="12,40", help="comma list of head counts (12: T2V-1.3B, 40: 14B)")
  p.add_argument("--tokens", type=int, default=32760)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--block-q", type=int, default=64)
  p.add_argument("--block-kv", default="128,64", help="comma list of the kernel's key block sizes")
  p.add_argument("--steps", type=int, default=2, help="the kernel's max_concurrent_steps (pipeline depth)")
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--repeat", type=int, default=10,
                 help="calls chained per timed sample (no per-call dispatch in the figure)")
  p.add_argument("--no-torch", dest="torch", action="store_false", help="skip torch SDPA")
  p.add_argument("--small", action="store_true", help="CPU run: 200 tokens, 2 heads of 64, plain-attention main")
  args = p.parse_args()
  cli.apply_small(p, args, {"heads": "2", "tokens": 200, "head_dim": 64, "block_kv": "64", "iters": 2, "repeat": 2})
  args.heads = cli.int_list(p, "--heads", args.heads)
  args.block_kv = cli.int_list(p, "--block-kv", args.block_kv)
  if min(args.tokens, args.iters, args.repeat) < 1:
    p.error(f"--tokens, --iters and --repeat must be >= 1, got {args.tokens}, {args.iters} and {args.repeat}")
  import jax
  on_gpu = jax.default_backend() == "gpu"
  rows = [run_shape(args, h, on_gpu) for h in args.heads]
  dev = jax.devices()[0].device_kind
  for row in rows:
    print(f"[1, {row['tokens']}, {row['heads']}, {row['head_dim']}] bf16 on {dev} ({row['gflop']:.0f} GFLOP):")
    for name, r in row.items():
      if not isinstance(r, dict):
        continue
      if "error" in r:
        print(f"  {name:>40}: failed: {r['error']}")
      else:
        err = r.get("rel_diff_vs_reference")
        print(f"  {name:>40}: {r['ms']:8.3f} ms  {r['tflops']:6.1f} TFLOP/s"
              + ("" if err is None else f"  rel diff vs reference {err:.2e}"))
  print(json.dumps(dict(bench="attention_mgpu", device=dev, on_gpu=on_gpu, shapes=rows)))


if __name__ == "__main__":
  cli.run(main)
