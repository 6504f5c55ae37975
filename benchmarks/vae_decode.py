"""Wan VAE decode benchmark: time and peak device memory, chunked (scan over latent frames) with and without
spatial tiling, real `wan21` architecture with random weights.

  python benchmarks/vae_decode.py                                   # 81x480x832 (latent 21x60x104), fp32
  python benchmarks/vae_decode.py --policy bf16 --tile 32,32 --overlap 8
  python benchmarks/vae_decode.py --modes chunked,tiled,full        # "full" = whole-sequence (memory hungry)
  python benchmarks/vae_decode.py --small                           # CPU smoke test: tiny model, 17x64x64

Each mode runs in its own subprocess, so peak memory is per mode. Prints the device, shapes, dtype, compile
seconds (ahead-of-time `lower().compile()`), first-call and steady-state seconds (median of N after warm-up,
block_until_ready), and one JSON line to paste into reports.

Memory is reported two ways so that state, compilation and execution can be told apart:
- XLA's own plan for the compiled program (`compiled.memory_analysis()`): `xla_temp_gb` is the decode's working
  set (scratch buffers), next to its argument (weights + latent), output and generated-code sizes. Works on CPU.
- the device allocator (`memory_stats()`, GPU/TPU only; null on CPU) at four points: after the weights and the
  latent exist (`state_in_use_gb`, `state_peak_gb`), after compiling (`compile_peak_gb`: XLA GPU autotunes convs
  during compilation, with scratch taken from the same allocator), after the first call (`first_call_peak_gb`)
  and after the timed runs (`peak_gb`, `in_use_after_gb`).
  The allocator's peak never goes down, so a `peak_gb` equal to `compile_peak_gb` and well above
  `state_in_use_gb + xla_temp_gb + xla_output_gb` means the peak came from compilation, not from decoding
  (cross-check: XLA_FLAGS=--xla_gpu_autotune_level=0 turns the autotuner off).
On CPU (compile only, 2026-11-26) the plan for the full 21x60x104 latent is: chunked temp 6.76 GiB fp32 / 4.38
bf16, tiled (32,32)/8 1.16 / 0.98 GiB, tiled (16,16)/4 0.30 GiB fp32, whole-sequence "full" 46.5 GiB; arguments
0.28 GiB, output 0.36 GiB in every mode. (Tiled was 1.70 / 1.56 and 1.03 GiB while the tile outputs were stacked
before blending; each tile is now added into the output as it is decoded.)
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GIB = 2**30

from benchmarks import cli  # noqa: E402
MODES = ("chunked", "tiled", "full")


def allocator_gb():
  """(bytes_in_use, peak_bytes_in_use) of the first device in GiB, or (None, None) where there are no stats (CPU)."""
  import jax
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None, None
  return stats.get("bytes_in_use", 0) / GIB, stats.get("peak_bytes_in_use", 0) / GIB


def xla_memory_gb(compiled):
  """The compiled program's buffer plan from XLA, in GiB (None for fields this backend leaves out)."""
  ma = compiled.memory_analysis()
  fields = dict(temp="temp_size_in_bytes", argument="argument_size_in_bytes", output="output_size_in_bytes",
                alias="alias_size_in_bytes", code="generated_code_size_in_bytes", peak="peak_memory_in_bytes")
  out = {}
  for name, attr in fields.items():
    v = getattr(ma, attr, None) if ma is not None else None
    out[f"xla_{name}_gb"] = None if v is None else v / GIB
  return out


def run_mode(args):
  import jax
  import numpy as np
  from flax import nnx
  from wanjax.vae import create_vae, decode_latent, get_config

  cfg = get_config(args.model)
  frames, h, w = args.frames, args.height, args.width
  latent_shape = (1, 1 + (frames - 1) // 4, h // 8, w // 8, cfg.z_dim)
  t0 = time.perf_counter()
  vae = create_vae(cfg, policy=args.policy, seed=0)
  graphdef, state = nnx.split(vae)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  latent = jax.random.normal(jax.random.key(0), latent_shape).block_until_ready()
  tile = tuple(int(v) for v in args.tile.split(",")) if args.mode == "tiled" else None
  kw = dict(chunked=args.mode != "full", tile=tile, overlap=args.overlap)
  state_in_use, state_peak = allocator_gb()

  # The same program `decode_latent` runs, compiled ahead of time so that its memory plan can be read and the
  # compilation's own allocations are seen apart from the run's.
  fn = jax.jit(lambda st, z: decode_latent(nnx.merge(graphdef, st), z, **kw))
  t0 = time.perf_counter()
  compiled = fn.lower(state, latent).compile()
  compile_s = time.perf_counter() - t0
  _, compile_peak = allocator_gb()
  xla_mem = xla_memory_gb(compiled)

  t0 = time.perf_counter()
  out = compiled(state, latent).block_until_ready()
  first_s = time.perf_counter() - t0
  _, first_peak = allocator_gb()
  times = []
  for _ in range(args.iters):
    t0 = time.perf_counter()
    compiled(state, latent).block_until_ready()
    times.append(time.perf_counter() - t0)
  sec = float(np.median(times))
  in_use, peak = allocator_gb()
  dev = jax.devices()[0]
  return dict(mode=args.mode, device=dev.device_kind, platform=dev.platform, model=args.model,
              policy=args.policy, video=[frames, h, w], latent=list(latent_shape), tile=tile,
              overlap=args.overlap if tile else None, sec=sec, compile_s=compile_s, first_call_s=first_s,
              init_s=init_s, peak_gb=peak or 0.0, state_in_use_gb=state_in_use, state_peak_gb=state_peak,
              compile_peak_gb=compile_peak, first_call_peak_gb=first_peak, in_use_after_gb=in_use, **xla_mem,
              out_shape=list(out.shape), finite=bool(np.isfinite(np.asarray(out)).all()))


def _gb(v):
  return "n/a" if v is None else f"{v:.3g}"


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
  cli.apply_small(p, args, dict(model="tiny", frames=17, height=64, width=64, iters=1, tile="4,4", overlap=2),
                  preset="model")
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  if not modes or any(m not in MODES for m in modes):
    p.error(f"--modes={args.modes!r}: a comma list of {', '.join(MODES)}")
  tile = cli.int_list(p, "--tile", args.tile)
  if len(tile) != 2:
    p.error(f"--tile={args.tile!r} must be two latent sizes th,tw (e.g. 32,32)")
  cli.check_frames(p, args.frames)
  if args.height % 8 or args.width % 8 or min(args.height, args.width) < 8:
    p.error(f"--height={args.height} and --width={args.width} must be positive multiples of 8")
  if args.overlap < 0 or args.iters < 1:
    p.error(f"--overlap={args.overlap} must be >= 0 and --iters={args.iters} >= 1")
  if args.mode:
    print("RESULT " + json.dumps(run_mode(args)))
    return
  from wanjax.vae import get_config
  get_config(args.model)   # an unknown preset fails here, once, not in every child
  results = {}
  for mode in modes:
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
    print(f"{'':>8} XLA plan: temp {_gb(r['xla_temp_gb'])} GiB, arguments {_gb(r['xla_argument_gb'])}, output "
          f"{_gb(r['xla_output_gb'])}, code {_gb(r['xla_code_gb'])}; allocator in use/peak after weights "
          f"{_gb(r['state_in_use_gb'])}/{_gb(r['state_peak_gb'])} GiB, peak after compile "
          f"{_gb(r['compile_peak_gb'])}, after first call {_gb(r['first_call_peak_gb'])}, after all runs "
          f"{_gb(r['peak_gb'])}")
  print(json.dumps(dict(benchmark="vae_decode", results=results)))
  cli.exit_if_failed([m for m, r in results.items() if r is None])


if __name__ == "__main__":
  cli.run(main)
