"""Self-attention probe: cuDNN bf16 flash attention vs cuDNN FP8 (e4m3) flash attention vs torch SDPA, one shape.

  python benchmarks/attention_fp8.py                  # T2V-1.3B self-attention: [1, 32760, 12, 128]
  python benchmarks/attention_fp8.py --heads 40       # T2V-14B
  python benchmarks/attention_fp8.py --small          # CPU smoke run: XLA path only, FP8 and torch skipped
  python benchmarks/attention_fp8.py --kv-lengths 4680,14040,32760   # also: does key-length masking save time?

Why: in the DiT forward both wanjax and diffusers spend most of their time in the same bf16 flash-attention
kernel (`benchmarks/dit_forward.py` prints the split), so an exact port cannot be much faster than diffusers.
The one faster kernel jax ships for this shape is cuDNN's FP8 flash attention, reachable only through the private
`jax._src.cudnn.fused_attention_stablehlo.dot_product_attention(..., use_fp8=True)`. This probe measures what it
would give before anything depends on it: seconds per call (quantisation included), achieved TFLOP/s, and the
relative L2 error of the output against an fp32 reference on the first `--ref-rows` query rows, for both kernels.

FP8 recipe (per-tensor, computed inside the jitted call): q, k, v are scaled by 448 / amax into e4m3 and the kernel
gets the inverse as descale factors; the softmax probabilities are scaled by 448 (they are at most 1) and the
output by 448 / amax(v) (an output row is a convex combination of v rows, so |o| <= amax(v)); the e4m3 output is
cast back to bf16 and descaled. Random normal inputs give flat softmax rows; real attention is peakier, so the
errors here are a first look, not a quality verdict.

`--kv-lengths` answers a question of the autoregressive sampler, whose KV cache is one static 32,760-slot buffer
per layer: 4,680 new queries attend to the first n slots (`key_lengths`). If the time per call does not fall with
n, the kernel computes the masked tiles too, and early blocks pay for the whole buffer.
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402

E4M3_MAX = 448.0


def attention_flops(L, heads, head_dim):
  return 2 * 2 * L * L * heads * head_dim   # QK^T and PV, 2 FLOPs per MAC


def fp8_attention(q, k, v):
  """cuDNN FP8 flash attention with per-tensor scales; bf16 in, bf16 out (`[B, L, N, K]`)."""
  import jax.numpy as jnp
  from jax._src.cudnn import fused_attention_stablehlo as fa

  f8 = jnp.float8_e4m3fn

  def quant(x):
    amax = jnp.maximum(jnp.max(jnp.abs(x.astype(jnp.float32))), 1e-6)
    return (x.astype(jnp.float32) * (E4M3_MAX / amax)).astype(f8), amax / E4M3_MAX

  one = lambda x: jnp.asarray(x, jnp.float32).reshape(1, 1, 1, 1)
  (q8, dq), (k8, dk), (v8, dv) = quant(q), quant(k), quant(v)
  amax_v = dv * E4M3_MAX
  scale_o = E4M3_MAX / amax_v
  params = {key: one(1.0) for key in fa.fp8_params_keys}
  params.update(descale_q=one(dq), descale_k=one(dk), descale_v=one(dv), scale_s=one(E4M3_MAX),
                descale_s=one(1.0 / E4M3_MAX), scale_o=one(scale_o))
  out, _, _ = fa.dot_product_attention(q8, k8, v8, fp8_params=params, scale=q.shape[-1] ** -0.5,
                                       use_fp8=True, qkv_layout="BTNH")
  return (out.astype(jnp.float32) / scale_o).astype(jnp.bfloat16)


def bnth_attention(q, k, v):
  """cuDNN bf16 flash attention on head-major `[B, N, L, K]` operands (torch's layout), transposes included."""
  from jax._src.cudnn import fused_attention_stablehlo as fa
  t = lambda x: x.transpose(0, 2, 1, 3)
  out = fa.dot_product_attention(t(q), t(k), t(v), scale=q.shape[-1] ** -0.5, qkv_layout="BNTH")
  return t(out)


def run_jax(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from wanjax.ops.attention import attention

  shape = (1, args.tokens, args.heads, args.head_dim)
  q, k, v = (jax.random.normal(jax.random.key(i), shape, jnp.bfloat16) for i in range(3))
  q = (q * args.q_scale).astype(jnp.bfloat16)
  rows = min(args.ref_rows, args.tokens)
  # fp32 reference on the first `rows` queries (all keys): exact softmax attention with XLA.
  ref = jax.jit(lambda q, k, v: attention(q[:, :rows].astype(jnp.float32), k.astype(jnp.float32),
                                          v.astype(jnp.float32), impl="xla"))(q, k, v)
  ref = np.asarray(ref, np.float64)

  def rel_err(out):
    out = np.asarray(out[:, :rows], np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))

  on_gpu = jax.default_backend() == "gpu"
  impls = {"bf16_" + ("cudnn" if on_gpu else "xla"): lambda q, k, v: attention(q, k, v,
                                                                              impl="cudnn" if on_gpu else "xla")}
  if on_gpu:
    impls["bf16_cudnn_bnth"] = bnth_attention
    impls["fp8_cudnn"] = fp8_attention
  flops = attention_flops(args.tokens, args.heads, args.head_dim)
  results = {}
  for name, fn in impls.items():
    f = jax.jit(fn)
    try:
      t0 = time.perf_counter()
      compiled = f.lower(q, k, v).compile()
      compile_s = time.perf_counter() - t0
      out = compiled(q, k, v)
      err = rel_err(out)
      sec = median_s(lambda: compiled(q, k, v).block_until_ready(), args.iters)
      results[name] = dict(sec=sec, tflops=flops / sec / 1e12, compile_s=compile_s, rel_l2_err=err,
                           finite=bool(np.isfinite(np.asarray(out, np.float32)).all()))
    except Exception as e:  # report, keep the other kernels' figures
      results[name] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
  # Key-length masking over a fixed buffer (the AR sampler's static KV cache): `--query-tokens` queries attend
  # to the first n of `--tokens` keys. If the time does not fall with n, the kernel computes the masked tiles.
  masked = {}
  if args.kv_lengths:
    impl = "cudnn" if on_gpu else "xla"
    lq = min(args.query_tokens, args.tokens)
    f = jax.jit(lambda q, k, v, n: attention(q[:, :lq], k, v, key_lengths=n, impl=impl))
    for n in args.kv_lengths:
      lengths = jnp.array([n], jnp.int32)
      ms = median_s(lambda: f(q, k, v, lengths).block_until_ready(), args.iters) * 1e3
      masked[str(n)] = dict(ms=ms, tflops=2 * 2 * lq * n * args.heads * args.head_dim / (ms / 1e3) / 1e12)
  return dict(device=jax.devices()[0].device_kind, results=results, key_lengths=masked,
              query_tokens=min(args.query_tokens, args.tokens))


def run_torch(args):
  import torch
  if not torch.cuda.is_available():
    return None
  shape = (1, args.heads, args.tokens, args.head_dim)
  q, k, v = (torch.randn(*shape, device="cuda", dtype=torch.bfloat16) for _ in range(3))

  def call():
    torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.cuda.synchronize()
  flops = attention_flops(args.tokens, args.heads, args.head_dim)
  with torch.no_grad():
    sec = median_s(call, args.iters)
    backends = {}  # the default pick above, then each backend forced, to name which one the default is
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for b in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
      try:
        with sdpa_kernel(getattr(SDPBackend, b)):
          backends[b.lower()] = median_s(call, args.iters)
      except Exception as e:  # a backend this build or card lacks
        backends[b.lower()] = f"{type(e).__name__}"
  return dict(sec=sec, tflops=flops / sec / 1e12, backends_sec=backends, device=torch.cuda.get_device_name())


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tokens", type=int, default=32760)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--ref-rows", type=int, default=1024, help="query rows compared against the fp32 reference")
  p.add_argument("--q-scale", type=float, default=1.0,
                 help="multiply q by this: > 1 makes softmax rows peakier (random inputs give flat rows)")
  p.add_argument("--kv-lengths", default="", help="comma list: also time --query-tokens queries over the first n "
                 "keys of the --tokens buffer (key_lengths masking, as the AR KV cache)")
  p.add_argument("--query-tokens", type=int, default=4680, help="queries of the --kv-lengths timing (3 frames)")
  p.add_argument("--small", action="store_true", help="CPU smoke run: 256 tokens, 2 heads, 2 iterations")
  p.add_argument("--only", choices=["jax", "torch"], help=argparse.SUPPRESS)
  args = p.parse_args()
  try:
    args.kv_lengths = [int(v) for v in args.kv_lengths.split(",") if v.strip()]
  except ValueError:
    p.error(f"--kv-lengths must be a comma list of integers, got {args.kv_lengths!r}")
  cli.apply_small(p, args, dict(tokens=256, heads=2, iters=2, ref_rows=64, query_tokens=64))
  if args.small:
    dropped = [n for n in args.kv_lengths if n > args.tokens]
    if dropped:
      print(f"--small: dropped --kv-lengths {','.join(map(str, dropped))} (longer than the {args.tokens}-token "
            f"buffer)", file=sys.stderr)
    args.kv_lengths = [n for n in args.kv_lengths if n <= args.tokens]
  too_long = [n for n in args.kv_lengths if n > args.tokens]
  if too_long:
    p.error(f"--kv-lengths {','.join(map(str, too_long))}: longer than the --tokens={args.tokens} key buffer")
  for name, val in (("--tokens", args.tokens), ("--heads", args.heads), ("--head-dim", args.head_dim),
                    ("--iters", args.iters), ("--ref-rows", args.ref_rows), ("--query-tokens", args.query_tokens),
                    *(("--kv-lengths", n) for n in args.kv_lengths)):
    if val < 1:
      p.error(f"{name} must be >= 1, got {val}")
  if args.only:
    out = run_jax(args) if args.only == "jax" else run_torch(args)
    print("RESULT " + json.dumps(out))
    return

  def sub(which):
    cmd = [sys.executable, os.path.abspath(__file__), "--only", which, "--tokens", str(args.tokens),
           "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--iters", str(args.iters),
           "--ref-rows", str(args.ref_rows), "--q-scale", str(args.q_scale), "--query-tokens",
           str(args.query_tokens), "--kv-lengths", ",".join(map(str, args.kv_lengths))]
    result, proc = cli.run_child(cmd)
    if result is None:
      cli.child_failed(which, proc, file=sys.stderr, tail=2000)
    return result

  jx = sub("jax")
  th = None
  if not args.small:
    try:
      import torch  # noqa: F401  (torch is optional here: the probe's figures are the jax kernels)
      th = sub("torch")
    except ImportError:
      pass
  shape = f"[1, {args.tokens}, {args.heads}, {args.head_dim}]"
  summary = dict(bench="attention_fp8", shape=shape, q_scale=args.q_scale, jax=jx, torch_sdpa=th)
  if jx:
    for name, r in jx["results"].items():
      if "error" in r:
        print(f"{name:>15} on {jx['device']}: {r['error']}")
      else:
        print(f"{name:>15} on {jx['device']}: {r['sec'] * 1e3:.2f} ms, {r['tflops']:.0f} TFLOP/s, compile "
              f"{r['compile_s']:.1f} s, rel. L2 error vs fp32 {r['rel_l2_err']:.2e}, finite {r['finite']}")
  if jx and jx["key_lengths"]:
    print(f"{jx['query_tokens']} queries over the first n of {args.tokens} keys (key_lengths): " + ", ".join(
        f"n={n}: {r['ms']:.2f} ms ({r['tflops']:.0f} TFLOP/s on the unmasked part)"
        for n, r in jx["key_lengths"].items()))
  if th:
    print(f"{'torch sdpa':>15} on {th['device']}: {th['sec'] * 1e3:.2f} ms, {th['tflops']:.0f} TFLOP/s (forced: "
          + ", ".join(f"{b} {v * 1e3:.2f} ms" if isinstance(v, float) else f"{b} {v}"
                      for b, v in th["backends_sec"].items()) + ")")
  if jx and "fp8_cudnn" in jx["results"] and "sec" in jx["results"]["fp8_cudnn"]:
    r8, r16 = jx["results"]["fp8_cudnn"], jx["results"]["bf16_cudnn"]
    summary["fp8_speedup_vs_bf16"] = r16["sec"] / r8["sec"]
    print(f"fp8 / bf16 cuDNN speed-up: {summary['fp8_speedup_vs_bf16']:.3f}x")
  print(json.dumps(summary))
  if not jx:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)
