"""Wan VAE decode benchmark: time and peak device memory, chunked (scan over latent frames) with and without
spatial tiling, real `wan21` architecture with random weights.

  python benchmarks/vae_decode.py                                   # 81x480x832 (latent 21x60x104), fp32
  python benchmarks/vae_decode.py --policy bf16 --tile 32,32 --overlap 8
  python benchmarks/vae_decode.py --modes chunked,tiled,full        # "full" = whole-sequence (memory hungry)
  python benchmarks/vae_decode.py --small                           # CPU smoke test: tiny model, 17x64x64

Each mode runs in its own subprocess, so peak memory is per mode. Prints the device, shapes, dtype, compile
(first call minus steady state) and steady-state seconds (median of N after warm-up, block_until_ready), peak
device memory, and one JSON line to paste into reports.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_mode(args):
  import jax
  import numpy as np
  from wanjax.vae import create_vae, decode_latent, get_config

  cfg = get_config(args.model)
  frames, h, w = args.frames, args.height, args.width
  latent_shape = (1, 1 + (frames - 1) // 4, h // 8, w // 8, cfg.z_dim)
  t0 = time.perf_counter()
  vae = create_vae(cfg, policy=args.policy, seed=0)
  jax.block_until_ready(vae.decoder.head_conv.kernel[...])
  init_s = time.perf_counter() - t0
  latent = jax.random.normal(jax.random.key(0), latent_shape)
  tile = tuple(int(v) for v in args.tile.split(",")) if args.mode == "tiled" else None
  kw = dict(chunked=args.mode != "full", tile=tile, overlap=args.overlap)

  t0 = time.perf_counter()
  out = decode_latent(vae, latent, **kw).block_until_ready()
  first_s = time.perf_counter() - t0
  times = []
  for _ in range(args.iters):
    t0 = time.perf_counter()
    decode_latent(vae, latent, **kw).block_until_ready()
    times.append(time.perf_counter() - t0)
  sec = float(np.median(times))
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  return dict(mode=args.mode, device=dev.device_kind, platform=dev.platform, model=args.model,
              policy=args.policy, video=[frames, h, w], latent=list(latent_shape), tile=tile,
              overlap=args.overlap if tile else None, sec=sec, compile_s=max(first_s - sec, 0.0), init_s=init_s,
              peak_gb=stats.get("peak_bytes_in_use", 0) / 2**30, out_shape=list(out.shape),
              finite=bool(np.isfinite(np.asarray(out)).all()))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="wan21")
  p.add_argument("--frames", type=int, default=81)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--policy", default="float32", choices=["float32", "bf16"])
  p.add_argument("--modes", default="chunked,tiled", help="comma list of chunked, tiled, full")
  p.add_argument("--tile", default="32,32", help="latent tile th,tw for the tiled mode")
  p.add_argument("--overlap", type=int, default=8, help="tile overlap in latent pixels")
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--small", action="store_true", help="tiny model, 17x64x64, on whatever device (CPU smoke)")
  p.add_argument("--mode", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.small:
    args.model, args.frames, args.height, args.width, args.iters = "tiny", 17, 64, 64, 1
    args.tile, args.overlap = "4,4", 2
  if args.mode:
    print("RESULT " + json.dumps(run_mode(args)))
    return
  results = {}
  for mode in args.modes.split(","):
    cmd = [sys.executable, __file__, "--mode", mode] + sys.argv[1:]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not line:
      print(f"{mode} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
      results[mode] = None
      continue
    r = results[mode] = json.loads(line[-1][7:])
    print(f"{mode:>8} on {r['device']} ({r['platform']}): {r['model']} {r['policy']}, video {r['video']} <- latent "
          f"{r['latent']}, tile {r['tile']} overlap {r['overlap']}: {r['sec']:.3f} s steady, compile "
          f"{r['compile_s']:.1f} s, peak {r['peak_gb']:.2f} GiB, finite {r['finite']}")
  print(json.dumps(dict(benchmark="vae_decode", results=results)))


if __name__ == "__main__":
  main()
