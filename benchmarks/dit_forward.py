"""DiT forward benchmark: wanjax vs diffusers `WanTransformer3DModel` (torch SDPA), same shapes, same run.

  python benchmarks/dit_forward.py --model t2v_1_3b            # 81x480x832 -> 32,760 tokens, 512 text tokens
  python benchmarks/dit_forward.py --model t2v_14b --bf16-weights   # 14B, every weight in bf16 (as measured so far)
  python benchmarks/dit_forward.py --model t2v_14b                  # 14B under the bf16 policy: kernels bf16, 27 GiB
  python benchmarks/dit_forward.py --small                     # CPU smoke test (tiny model)

Each framework runs in its own subprocess (so neither sees the other's GPU memory). Random weights, bf16.
Prints per framework: seconds per forward (median of N after warm-up), compile/first-call time, peak device
memory, achieved TFLOP/s; then the ratio, and one JSON line to paste into reports.

Each framework also times its self-attention kernel alone (`self_attn_s`: the layer count's `[1, L, N, K]` bf16
attention calls back to back, each call's output the next one's query, in one jitted loop for wanjax and one
synchronised stream of calls for torch; wanjax's `attention(impl=--attn)`, torch's SDPA as diffusers calls it).
That splits the forward into attention and the rest, and bounds what any change outside the kernel can give:
`max_speedup_same_attention` = diffusers' forward / wanjax's attention time alone. (Until session 12 this was
one timed call times the layer count, which added one dispatch and wait per layer: ~0.9 ms on an H100 against a
~10.5 ms attention kernel in a device trace.)

`--profile N` (with `--only jax`: wanjax alone, printed as it runs) then traces N forwards with XLA's CUDA graphs
off and prints their kernel table and the device's idle gaps (`dit_layer_breakdown.profile_block`): where the
forward's time outside the blocks goes. `--scan-unroll 1,2,30` times wanjax's forward with 1, 2 and 30 layers per
iteration of its scanned layer loop (`WanDiT(scan_unroll=...)`, same parameters; longer compiles): what the loop
itself costs. `--f32-kernels` keeps the bf16 matmuls' kernels in float32 (cast in every forward, as before
session 14; the default stores them in bf16 as `infer.sample` does, same outputs). `--ffn-gelu bf16_formula` times
the FFN's bias + GELU in the all-bf16 spelling that XLA's GEMM rewriter folds into a cuBLASLt BIAS_GELU epilogue;
run it with `XLA_FLAGS=--xla_gpu_enable_cublaslt=true` (the rewriter fuses only into cuBLASLt matmuls;
`gelu_epilogue.py` shows whether it fired).
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

SHAPES = {  # latent F, H, W (before 2x2 patchify) for 81 frames at 480x832 / 720x1280
    "480p": (21, 60, 104),   # 21 * 30 * 52 = 32,760 tokens
    "720p": (21, 90, 160),   # 75,600 tokens
    "small": (3, 4, 6),
}


def flops_per_forward(cfg, L, S):
  """Matmul FLOPs of one DiT forward (2 per MAC), attention included."""
  D, M = cfg["dim"], cfg["ffn_dim"]
  per_layer = (2 * L * D * D * 4            # self q,k,v,o
               + 2 * 2 * L * L * D          # self QK^T and PV
               + 2 * L * D * D * 2          # cross q,o
               + 2 * S * D * D * 2          # cross k,v
               + 2 * 2 * L * S * D          # cross attention
               + 2 * L * D * M * 2)         # ffn
  return per_layer * cfg["num_layers"]


def run_jax(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from wanjax.dit.config import get_config
  from wanjax.dit import layers as dit_layers
  from wanjax.dit.model import WanDiT
  import dataclasses

  dit_layers.ffn_gelu_form = lambda: args.ffn_gelu   # read when the forward is traced (nothing is yet)
  cfg = get_config(args.model)
  if args.layers:
    cfg = dataclasses.replace(cfg, num_layers=args.layers)
  F, H, W = SHAPES[args.shape]
  policy = "bf16_weights" if args.bf16_weights else "bf16"
  t0 = time.perf_counter()
  unrolls = args.scan_unroll
  model = nnx.eval_shape(lambda: WanDiT(cfg, policy=policy, rngs=nnx.Rngs(0), attn_impl=args.attn,
                                        scan_unroll=unrolls[0]))
  graphdef, state = nnx.split(model)

  @jax.jit
  def init():
    m = WanDiT(cfg, policy=policy, rngs=nnx.Rngs(0), attn_impl=args.attn, scan_unroll=unrolls[0])
    if not args.f32_kernels:   # what `infer.sample` runs: the bf16 matmuls' kernels stored in bf16 (same outputs)
      from wanjax.nn import cast_kernels
      cast_kernels(m)
    return nnx.state(m)
  state = init()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0

  def forward_fn(gdef):
    def fwd(state, x, t, ctx):
      return nnx.merge(gdef, state)(x, t, ctx)
    return jax.jit(fwd)

  key = jax.random.key(0)
  x = jax.random.normal(key, (1, F, H, W, cfg.in_dim), jnp.float32)
  t = jnp.array([999.0], jnp.float32)
  ctx = jax.random.normal(key, (1, cfg.text_len, cfg.text_dim), jnp.float32)
  by_unroll = {}
  for u in unrolls:   # the same parameters; only the static unroll of the layer loop differs
    gdef = graphdef if u == unrolls[0] else nnx.split(nnx.eval_shape(lambda: WanDiT(
        cfg, policy=policy, rngs=nnx.Rngs(0), attn_impl=args.attn, scan_unroll=u)))[0]
    t0 = time.perf_counter()
    compiled = forward_fn(gdef).lower(state, x, t, ctx).compile()
    c_s = time.perf_counter() - t0
    out = compiled(state, x, t, ctx)
    fin = bool(np.isfinite(np.asarray(out, np.float32)).all())
    del out
    by_unroll[u] = dict(sec=median_s(lambda c=compiled: c(state, x, t, ctx).block_until_ready(), args.iters),
                        compile_s=c_s, finite=fin)
    if u != unrolls[-1]:
      del compiled
  sec, compile_s, finite = (by_unroll[unrolls[0]][k] for k in ("sec", "compile_s", "finite"))
  L = F * (H // 2) * (W // 2)
  prof = {}
  if args.profile:
    from benchmarks.dit_layer_breakdown import profile_block, print_kernels
    prof = profile_block(compiled, (state, x, t, ctx), args.profile, 20)    # the last --scan-unroll value's
    print_kernels(dict(prof, block_ms=by_unroll[unrolls[-1]]["sec"] * 1e3, device=jax.devices()[0].platform), "forward")
  del compiled
  from wanjax.ops.attention import attention
  q, k, v = (jax.random.normal(jax.random.key(i), (1, L, cfg.num_heads, cfg.head_dim), jnp.bfloat16)
             for i in range(3))
  # All layers' calls in one program (each call's output is the next one's query, so none can be skipped), as in
  # the forward: timing single calls would add one dispatch and wait per layer.
  attn = jax.jit(lambda q, k, v: jax.lax.fori_loop(
      0, cfg.num_layers, lambda i, a: attention(a, k, v, impl=args.attn), q))
  self_attn_s = median_s(lambda: attn(q, k, v).block_until_ready(), args.iters)
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  return dict(framework="jax", device=dev.device_kind, sec=sec, compile_s=compile_s,
              self_attn_s=self_attn_s,
              init_s=init_s, peak_gb=stats.get("peak_bytes_in_use", 0) / 2**30,
              flops=flops_per_forward(dataclasses.asdict(cfg), L, cfg.text_len), tokens=L, finite=finite,
              scan_unroll={str(u): r for u, r in by_unroll.items()}, ffn_gelu=args.ffn_gelu,
              f32_kernels=args.f32_kernels,
              xla_flags=os.environ.get("XLA_FLAGS", ""),
              **({"command_buffers": False, **prof} if args.profile else {}))


def run_torch(args):
  import torch
  from diffusers import WanTransformer3DModel
  from wanjax.dit.config import get_config
  import dataclasses

  cfg = get_config(args.model)
  layers = args.layers or cfg.num_layers
  F, H, W = SHAPES[args.shape]
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  with torch.device("meta"):
    model = WanTransformer3DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                                  in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim,
                                  freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=layers)
  model = model.to_empty(device=dev).to(torch.bfloat16)
  # to_empty leaves non-persistent buffers (the RoPE tables) as uninitialised memory: rebuild them, in bf16 as
  # `from_pretrained(torch_dtype=torch.bfloat16)` leaves them.
  r = model.rope
  model.rope = type(r)(r.attention_head_dim, r.patch_size, r.max_seq_len).to(dev, torch.bfloat16)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0, 0.02)
  model.eval()
  x = torch.randn(1, cfg.in_dim, F, H, W, device=dev, dtype=torch.bfloat16)
  t = torch.tensor([999], device=dev)
  ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device=dev, dtype=torch.bfloat16)

  def sync():
    if dev == "cuda":
      torch.cuda.synchronize()
  with torch.no_grad():
    t0 = time.perf_counter()
    out = model(x, t, ctx, return_dict=False)[0]
    sync()
    first_s = time.perf_counter() - t0
    finite = bool(torch.isfinite(out.float()).all())
    del out
    sec = median_s(lambda: model(x, t, ctx, return_dict=False), args.iters, sync)
  L = F * (H // 2) * (W // 2)
  q, k, v = (torch.randn(1, cfg.num_heads, L, cfg.head_dim, device=dev, dtype=torch.bfloat16) for _ in range(3))
  with torch.no_grad():
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def chain():   # the layers' calls back to back, one sync at the end (as the forward runs them)
      a = q
      for _ in range(layers):
        a = sdpa(a, k, v)
      return a
    self_attn_s = median_s(chain, args.iters, sync)
  peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0
  name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
  return dict(framework="diffusers", device=name, sec=sec, compile_s=first_s,
              self_attn_s=self_attn_s,
              peak_gb=peak, flops=flops_per_forward(dataclasses.asdict(cfg) | {"num_layers": layers}, L,
                                                    cfg.text_len),
              tokens=L, finite=finite)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="t2v_1_3b")
  p.add_argument("--layers", type=int, default=0, help="override num_layers (0 = preset)")
  p.add_argument("--shape", default="480p", choices=sorted(SHAPES))
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--attn", default="auto")
  p.add_argument("--bf16-weights", action="store_true", help="store JAX weights in bf16 (14B on one card)")
  p.add_argument("--f32-kernels", action="store_true",
                 help="keep the bf16 matmuls' kernels in float32 and cast them in every forward (as before session "
                      "14; `infer.sample` stores them in bf16: `wanjax.nn.cast_kernels`)")
  p.add_argument("--ffn-gelu", default="float32", choices=("float32", "bf16_formula"),
                 help="wanjax.dit.layers.ffn_gelu_form: fc1 bias + tanh GELU in float32 (default) or spelled in bf16 "
                      "as XLA folds it into a cuBLASLt epilogue (with XLA_FLAGS=--xla_gpu_enable_cublaslt=true)")
  p.add_argument("--small", action="store_true", help="tiny model on CPU (smoke test)")
  p.add_argument("--only", choices=["jax", "torch"], help=argparse.SUPPRESS)
  p.add_argument("--scan-unroll", default="1",
                 help="comma list: layers per iteration of wanjax's scanned layer loop, each compiled and timed in "
                      "the jax run (the first is the headline figure; 30 for the 1.3B = no loop)")
  p.add_argument("--profile", type=int, default=0, metavar="N",
                 help="then trace N jax forwards and print their kernel table and device idle gaps (XLA's CUDA "
                      "graphs are off in the jax run, so its timing then includes every kernel launch)")
  args = p.parse_args()
  args.scan_unroll = cli.int_list(p, "--scan-unroll", args.scan_unroll)
  if args.profile < 0:
    p.error(f"--profile must be >= 0 (0 = off), got {args.profile}")
  if args.profile and args.only == "jax":
    from benchmarks.dit_layer_breakdown import disable_command_buffers
    disable_command_buffers()
  cli.apply_small(p, args, dict(model="tiny", shape="small", iters=2), preset="model")
  if args.only:
    res = run_jax(args) if args.only == "jax" else run_torch(args)
    print("RESULT " + json.dumps(res))
    return
  from wanjax.dit.config import get_config
  get_config(args.model)   # an unknown preset fails here, once, not in both children
  if args.iters < 1 or args.layers < 0:
    p.error(f"--iters={args.iters} must be >= 1 and --layers={args.layers} >= 0")
  results = {}
  for fw in ("torch", "jax"):
    r, proc = cli.run_child([sys.executable, __file__, "--only", fw] + sys.argv[1:], preallocate=False)
    results[fw] = r
    if r is None:
      cli.child_failed(fw, proc)
      continue
    print(f"{r['framework']:>9} on {r['device']}: {r['sec']:.4f} s/forward, first/compile {r['compile_s']:.1f} s,"
          f" peak {r['peak_gb']:.2f} GiB, {r['flops'] / r['sec'] / 1e12:.1f} TFLOP/s, tokens {r['tokens']}")
    print(f"{'':>9}    self-attention alone {r['self_attn_s']:.4f} s ({100 * r['self_attn_s'] / r['sec']:.0f} % of "
          f"the forward), rest {r['sec'] - r['self_attn_s']:.4f} s")
    for u, ru in (r.get("scan_unroll") or {}).items() if len(r.get("scan_unroll") or {}) > 1 else ():
      print(f"{'':>9}    scan unroll {u:>2}: {ru['sec']:.4f} s/forward, compile {ru['compile_s']:.1f} s, "
            f"finite {ru['finite']}")
  summary = dict(model=args.model, layers=args.layers or None, shape=args.shape, results=results)
  if results.get("jax") and results.get("torch"):
    summary["speedup_vs_diffusers"] = results["torch"]["sec"] / results["jax"]["sec"]
    print(f"speed-up of wanjax over diffusers: {summary['speedup_vs_diffusers']:.3f}x")
    summary["max_speedup_same_attention"] = results["torch"]["sec"] / results["jax"]["self_attn_s"]
    print(f"bound with this attention kernel (diffusers' forward / wanjax's attention alone): "
          f"{summary['max_speedup_same_attention']:.3f}x")
  print(json.dumps(summary))
  cli.exit_if_failed([fw for fw, r in results.items() if r is None])


if __name__ == "__main__":
  cli.run(main)
