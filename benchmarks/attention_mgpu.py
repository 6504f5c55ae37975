"""Self-attention at Wan's 32,760 tokens: cuDNN (through jax) against JAX's Pallas Mosaic-GPU flash-attention kernel
for Hopper, and torch SDPA in the same run.

  python benchmarks/attention_mgpu.py                     # [1, 32760, 12, 128] and [1, 32760, 40, 128], bf16
  python benchmarks/attention_mgpu.py --heads 12 --block-kv 64,128
  python benchmarks/attention_mgpu.py --small             # CPU run: the tail merge against plain attention

The profile of a 1.3B block (`dit_layer_breakdown.py --profile`) puts the cuDNN attention kernel at ~10.4 ms of
the ~11.5-11.7 ms that the attention call takes on its own. The Pallas kernel
(`jax.experimental.pallas.ops.gpu.attention_mgpu`, warpgroup MMA, TMA pipelining) is the "Pallas kernel if faster"
of the performance issue; it has no softmax scale, no mask and needs the key count to be a multiple of its key
block and the query count a multiple of twice its query block. 32,760 is neither (2^3 * 4095), so
`split_tail_attention` runs the kernel over the first `block_kv * floor(S / block_kv)` keys (queries zero-padded,
their rows dropped), attends to the remaining < block_kv keys with a plain float32 softmax, and merges the two by
their log-sum-exps (the kernel returns its own). q is scaled by 1/sqrt(K) in bf16 before both (one rounding
cuDNN does not make; the error column shows its size).

Per shape: milliseconds per call (median of `--iters` samples of `--repeat` calls chained in one program, so
that a single call's dispatch and wait, ~0.9 ms on an H100, is not counted) and TFLOP/s (4*L*S*N*K) of jax cuDNN, of the Pallas kernel alone on
the key/query counts it accepts (32,768, no tail: its raw speed), of the split-tail Pallas attention at the real
length, and of torch SDPA; the relative L2 difference of the split-tail output from cuDNN's. A Pallas
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


def split_tail_attention(q, k, v, *, main, block_kv, q_multiple, scale=None):
  """Softmax attention of q `[B, L, N, K]` over k/v `[B, S, N, K]` (no mask) with a kernel `main` that only
  takes key counts in multiples of `block_kv` and query counts in multiples of `q_multiple`.

  `main(q, k, v) -> (out [B, Lp, N, K], lse [B, N, Lp] natural log)` gets the scaled queries zero-padded to
  Lp and the first `block_kv * floor(S / block_kv)` keys; the remaining keys are attended with a float32 softmax
  and both parts are combined with weights exp(lse_part - lse_all). Returns `[B, L, N, K]` in q's dtype."""
  import jax.numpy as jnp
  b, L, n, kd = q.shape
  S = k.shape[1]
  scale = 1.0 / math.sqrt(kd) if scale is None else scale
  qs = (q.astype(jnp.float32) * scale).astype(q.dtype)
  s_main = (S // block_kv) * block_kv
  parts = []
  if s_main:
    lp = -(-L // q_multiple) * q_multiple
    qp = jnp.pad(qs, ((0, 0), (0, lp - L), (0, 0), (0, 0))) if lp != L else qs
    out_m, lse_m = main(qp, k[:, :s_main], v[:, :s_main])
    parts.append((out_m[:, :L].astype(jnp.float32), lse_m[:, :, :L]))
  if s_main < S:
    kt, vt = k[:, s_main:], v[:, s_main:]
    logits = jnp.einsum("BLNK,BSNK->BNLS", qs, kt, preferred_element_type=jnp.float32)
    m = logits.max(axis=-1, keepdims=True)
    p = jnp.exp(logits - m)
    den = p.sum(axis=-1)
    out_t = jnp.einsum("BNLS,BSNK->BLNK", p, vt.astype(jnp.float32)) / den.transpose(0, 2, 1)[..., None]
    parts.append((out_t, m[..., 0] + jnp.log(den)))
  if len(parts) == 1:
    return parts[0][0].astype(q.dtype)
  (o1, l1), (o2, l2) = parts
  lse = jnp.logaddexp(l1, l2)
  w1 = jnp.exp(l1 - lse).transpose(0, 2, 1)[..., None]
  w2 = jnp.exp(l2 - lse).transpose(0, 2, 1)[..., None]
  return (o1 * w1 + o2 * w2).astype(q.dtype)


def mgpu_main(block_q, block_kv, steps):
  """The Pallas Mosaic-GPU kernel as a `split_tail_attention` main: (out, natural-log lse)."""
  from jax.experimental.pallas.ops.gpu import attention_mgpu as am
  cfg = am.TuningConfig(block_q=block_q, block_kv=block_kv, max_concurrent_steps=steps)

  def main(q, k, v):
    import jax.numpy as jnp
    # The kernel's shared-memory staging is float16 (jax 0.11): bf16 inputs go in as float16 (Wan's q/k after
    # RMSNorm and v stay far inside float16's range); the output comes back in the input dtype.
    q16, k16, v16 = (a.astype(jnp.float16) for a in (q, k, v))
    out, (lse2,) = am.attention(q16, k16, v16, cfg, save_residuals=True)
    return out.astype(q.dtype), lse2 * math.log(2.0)    # the kernel's lse is in base 2

  return main


def reference_main(q, k, v):
  """Plain float32 attention with its lse (the CPU stand-in for the kernel)."""
  import jax.numpy as jnp
  logits = jnp.einsum("BLNK,BSNK->BNLS", q, k, preferred_element_type=jnp.float32)
  m = logits.max(axis=-1, keepdims=True)
  p = jnp.exp(logits - m)
  den = p.sum(axis=-1)
  out = jnp.einsum("BNLS,BSNK->BLNK", p, v.astype(jnp.float32)) / den.transpose(0, 2, 1)[..., None]
  return out.astype(q.dtype), m[..., 0] + jnp.log(den)


def rel_l2(a, b):
  import jax.numpy as jnp
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def run_shape(args, heads, on_gpu):
  import jax
  import jax.numpy as jnp
  L, kd = args.tokens, args.head_dim
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (1, L, heads, kd), jnp.float32).astype(jnp.bfloat16) for kk in keys)
  flop = 4 * L * L * heads * kd
  row = dict(heads=heads, tokens=L, head_dim=kd, gflop=flop / 1e9)

  def timed(name, fn, *xs):
    """ms per call of `fn(q, k, v)`: `--repeat` calls chained in one program (each output is the next query),
    so that no per-call dispatch and wait is counted; returns one call's output."""
    try:
      chain = jax.jit(lambda q, k, v: jax.lax.fori_loop(0, args.repeat, lambda i, a: fn(a, k, v), q))
      compiled = chain.lower(*xs).compile()
      ms = median_s(lambda: jax.block_until_ready(compiled(*xs)), args.iters) * 1e3 / args.repeat
      row[name] = dict(ms=ms, tflops=4 * xs[0].shape[1] * xs[1].shape[1] * heads * kd / (ms / 1e3) / 1e12)
      return jax.jit(fn)(*xs)
    except Exception as e:  # noqa: BLE001 - a configuration the kernel refuses is a result, not a failure
      row[name] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
      return None

  if on_gpu:
    ref = timed("jax_cudnn", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"), q, k, v)
  else:
    ref = timed("jax_xla", lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"), q, k, v)
  for bkv in args.block_kv:
    tag = f"{'pallas' if on_gpu else 'reference'}_bq{args.block_q}_bkv{bkv}"
    main = mgpu_main(args.block_q, bkv, args.steps) if on_gpu else reference_main
    if on_gpu:   # the kernel alone on a length it accepts (its raw speed)
      n = -(-L // math.lcm(2 * args.block_q, bkv)) * math.lcm(2 * args.block_q, bkv)
      qa, ka, va = (jnp.pad(a, ((0, 0), (0, n - L), (0, 0), (0, 0))) for a in (q, k, v))
      timed(f"{tag}_kernel_{n}", lambda q, k, v: main(q, k, v)[0], qa, ka, va)
    out = timed(f"{tag}_split_tail", lambda q, k, v: split_tail_attention(
        q, k, v, main=main, block_kv=bkv, q_multiple=2 * args.block_q), q, k, v)
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
