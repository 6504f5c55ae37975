"""Causal (Self-Forcing) AR sampling benchmark: T2V-1.3B, 81 frames at 480×832 (21 latent frames, 3 per block,
7 blocks), 4 steps + context pass per block, none after the last (34 DiT calls; 35 before 2026-11-27), streaming
VAE decode of each finished block.

  python benchmarks/ar_sample.py                      # GPU: t2v_1_3b + Wan2.1 VAE, random weights, bf16
  python benchmarks/ar_sample.py --small              # CPU smoke test (tiny DiT + tiny VAE)
  python benchmarks/ar_sample.py --scan-unroll 30     # the DiT's 30 layers unrolled (no layer loop)
  python benchmarks/ar_sample.py --kv-buckets 4       # attention over the shortest of 4 cache prefixes (4 programs)
  python benchmarks/ar_sample.py --cache-per-layer    # the KV cache threaded per layer (the form before session 13)
  python benchmarks/ar_sample.py --f32-kernels        # float32 kernels cast in every call (before session 14)
  python benchmarks/ar_sample.py --vae-conv3d fold2d --vae-upsample subpixel   # the VAE's other conv forms
  python benchmarks/ar_sample.py --profile 1          # then a device trace of one whole run, by program and kind

Reports compile time (first run) apart from steady state (median of --iters runs after it): time to first decoded
frame, total time, frames per second including VAE decode, DiT time per call, and one JSON line.
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="t2v_1_3b")
  p.add_argument("--frames", type=int, default=81, help="pixel frames (4k+1)")
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--nfpb", type=int, default=3, help="latent frames per block (divides (frames - 1) / 4 + 1)")
  p.add_argument("--iters", type=int, default=2, help="timed runs after the first (compile) run")
  p.add_argument("--attn", default="auto")
  p.add_argument("--no-decode", action="store_true", help="DiT only (no VAE)")
  p.add_argument("--scan-unroll", type=int, default=1,
                 help="layers per iteration of the DiT's scanned layer loop (`WanDiT(scan_unroll=...)`)")
  p.add_argument("--kv-buckets", type=int, default=1,
                 help="AROptions.kv_buckets: attend the shortest of this many static prefixes of the KV cache "
                      "(one compiled DiT program each; 1 = the whole buffer, masked, in one program)")
  p.add_argument("--cache-per-layer", action="store_true",
                 help="AROptions.cache_in_carry=False: thread per-layer KV-cache slices through the DiT's layer loop "
                      "(the form before session 13) instead of writing the carried cache in place")
  p.add_argument("--f32-kernels", action="store_true",
                 help="keep the bf16 matmuls' kernels in float32, cast in every DiT call (the form before session 14)")
  p.add_argument("--vae-conv3d", default="conv3d", choices=("conv3d", "fold2d"),
                 help="wanjax.vae.layers.conv3d_form for the streamed decode")
  p.add_argument("--vae-upsample", default="repeat", choices=("repeat", "subpixel"),
                 help="wanjax.vae.layers.upsample_form for the streamed decode")
  p.add_argument("--profile", type=int, default=0, metavar="N",
                 help="after timing, trace N whole runs (XLA's CUDA graphs off for the whole process, so the timings "
                      "above then include every launch) and print kernel time per program (DiT call, update, decode) "
                      "and by kind (attention, matmul, convolution, copies, fusions)")
  p.add_argument("--small", action="store_true", help="tiny DiT + tiny VAE on CPU (smoke test)")
  args = p.parse_args()
  cli.apply_small(p, args, dict(model="tiny", frames=21, height=32, width=48, iters=1), preset="model")
  cli.check_frames(p, args.frames)
  for flag, val in (("--nfpb", args.nfpb), ("--iters", args.iters), ("--scan-unroll", args.scan_unroll),
                    ("--kv-buckets", args.kv_buckets), ("--profile", args.profile + 1)):
    if val < 1:
      p.error(f"{flag} must be >= 1, got {val}")
  if ((args.frames - 1) // 4 + 1) % args.nfpb:
    p.error(f"--nfpb={args.nfpb} must divide the {(args.frames - 1) // 4 + 1} latent frames of --frames={args.frames}")
  if args.height % 16 or args.width % 16:
    p.error(f"--height={args.height} and --width={args.width} must be multiples of 16")

  if args.profile:
    from benchmarks.dit_layer_breakdown import disable_command_buffers
    disable_command_buffers()   # before jax starts: the trace then shows every kernel
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from wanjax import sampling_ar
  from wanjax.dit.config import get_config
  from wanjax.dit.model import WanDiT
  from wanjax.vae.config import get_config as vae_config
  from wanjax.vae import layers as vae_layers
  from wanjax.vae.model import create_vae

  vae_layers.conv3d_form = lambda: args.vae_conv3d       # read when the decoder is traced (nothing is yet)
  vae_layers.upsample_form = lambda: args.vae_upsample

  cfg = get_config(args.model)
  policy = "float32" if args.small else "bf16"

  # Random weights, born on the device inside jit (nothing big on the host).
  def build(make, cast=False):
    graphdef, _ = nnx.split(nnx.eval_shape(make))

    def made():
      m = make()
      if cast:   # as `infer.sample_ar` runs it: the bf16 matmuls' kernels stored in bf16 (bit-identical outputs)
        from wanjax.nn import cast_kernels
        cast_kernels(m)
      return nnx.state(m)
    return nnx.merge(graphdef, jax.jit(made)())

  t0 = time.perf_counter()
  dit = build(lambda: WanDiT(cfg, policy=policy, rngs=nnx.Rngs(0), attn_impl=args.attn,
                             scan_unroll=args.scan_unroll), cast=not args.f32_kernels)
  # The VAE is filled on the host (`create_vae`): its device-side init compiles one RNG program per shape,
  # about 50 s on a CPU even for the tiny VAE.
  vae = None if args.no_decode else create_vae(vae_config("tiny" if args.small else "wan21"), policy=policy, seed=1)
  init_s = time.perf_counter() - t0

  f = (args.frames - 1) // 4 + 1
  h, w = args.height // 8, args.width // 8
  opts = sampling_ar.AROptions(frames_per_block=args.nfpb, cache_frames=f, kv_buckets=args.kv_buckets,
                               cache_in_carry=not args.cache_per_layer)
  key = jax.random.key(0)
  noise = jax.random.normal(key, (1, f, h, w, cfg.out_dim), jnp.float32)
  ctx = jax.random.normal(key, (1, cfg.text_len, cfg.text_dim), jnp.float32)

  def once():
    n = [0]
    res = sampling_ar.generate(dit, ctx, noise, opts, rng=jax.random.key(1), vae=vae,
                               on_frames=lambda fr: n.__setitem__(0, n[0] + np.asarray(fr).shape[1]))
    return res, n[0]

  t0 = time.perf_counter()
  res, _ = once()
  first_s = time.perf_counter() - t0
  runs = [once() for _ in range(args.iters)]
  total = float(np.median([r.stats["total_s"] for r, _ in runs]))
  ttff = float(np.median([r.stats.get("ttff_s", r.stats["total_s"]) for r, _ in runs]))
  frames = runs[-1][1] if vae is not None else args.frames
  calls = runs[-1][0].stats["model_calls"]
  dev = jax.devices()[0]
  mem = dev.memory_stats() or {}
  out = dict(
      bench="ar_sample", model=args.model, device=dev.device_kind, dtype=policy, frames=frames, latent=[f, h, w],
      frames_per_block=args.nfpb, scan_unroll=args.scan_unroll, kv_buckets=args.kv_buckets,
      cache_in_carry=opts.cache_in_carry, f32_kernels=args.f32_kernels,
      vae_conv3d=args.vae_conv3d, vae_upsample=args.vae_upsample, steps=len(sampling_ar.schedule(opts)[0]),
      model_calls=calls,
      decode=vae is not None, init_s=round(init_s, 2), first_run_incl_compile_s=round(first_s, 2),
      total_s=round(total, 4), ttff_s=round(ttff, 4), fps=round(frames / total, 3),
      dit_ms_per_call_upper_bound=round(1000 * total / calls, 2),
      peak_gb=round(mem.get("peak_bytes_in_use", 0) / 2**30, 2),
      finite=bool(jnp.all(jnp.isfinite(runs[-1][0].latents))))
  if args.profile:
    from benchmarks.dit_layer_breakdown import profile_calls
    out["profile"] = profile_calls(lambda: jax.block_until_ready(once()[0].latents), args.profile)
    out["command_buffers"] = False
  what = "incl. decode" if vae is not None else "DiT only, no decode"
  print(f"{args.model} on {dev.device_kind}: {frames} frames in {total:.3f} s ({out['fps']} fps {what}), "
        f"first frame after {ttff:.3f} s, {calls} DiT calls; first run (compile) {first_s:.1f} s"
        + (" (XLA's CUDA graphs off for --profile)" if args.profile else ""))
  if args.profile:
    from benchmarks.dit_layer_breakdown import print_profile_calls
    print_profile_calls(out["profile"], "run")
  print(json.dumps(out))


if __name__ == "__main__":
  cli.run(main)
