"""Wan VAE decode benchmark: time and peak device memory, chunked (scan over latent frames) with and without
spatial tiling, real `wan21` architecture with random weights.

  python benchmarks/vae_decode.py                                   # 81x480x832 (latent 21x60x104), fp32
  python benchmarks/vae_decode.py --policy bf16 --tile 32,32 --overlap 8
  python benchmarks/vae_decode.py --modes chunked,tiled,full        # "full" = whole-sequence (memory hungry)
  python benchmarks/vae_decode.py --small                           # CPU smoke test: tiny model, 17x64x64
  python benchmarks/vae_decode.py --reference none                  # wanjax only (no torch reference)
  python benchmarks/vae_decode.py --policy bf16 --conv-out float32  # convs writing float32 products (the old form)
  python benchmarks/vae_decode.py --policy bf16 --conv3d fold2d --upsample subpixel   # the alternative conv forms
  python benchmarks/vae_decode.py --policy bf16 --modes chunked --reference none --profile 1   # kernel table

Each mode line also gives the decode's convolution and matmul work (counted from its jaxpr, `benchmarks/flops.py`:
275 TFLOP for the 81x480x832 decode, 71 % of it in the 3x3x3 convs at 96 and 192 channels) and the TFLOP/s that
the steady time makes of it. The conv forms (`--conv3d fold2d`, `--upsample subpixel`; `wanjax.vae.layers`) compute
the same function in other kernels (tests/vae/test_vae_conv_forms.py); subpixel also does 16/36 of the upsample
convs' multiply-adds.

Each mode runs in its own subprocess, so peak memory is per mode. Prints the device, shapes, dtype, compile
seconds (ahead-of-time `lower().compile()`), first-call and steady-state seconds (median of N after warm-up,
block_until_ready), and one JSON line to paste into reports.

Reference (`--reference diffusers`, the default where torch and diffusers are installed): diffusers
`AutoencoderKLWan.decode` in its own subprocess, built from the same VAE config object (`diffusers_kwargs`), random
weights (torch's default init, as `create_vae`), parameters and compute in the `--policy` dtype (bf16: weights in
bf16 as well, as `torch_dtype=torch.bfloat16` loads them), on CUDA if available, on the same latent shape
[1, z, F, h, w]. TF32 is turned off (cuDNN allows it by default) so that float32 means float32 on both sides, as
the jax VAE convolves at Precision.HIGHEST. Its decode path is diffusers' default: frame by frame with a causal
cache, untiled. Timed as the jax side (first call, then median of `--iters`, `torch.cuda.synchronize`), with
`torch.cuda.max_memory_allocated` as its peak. Prints one "speed-up of wanjax over diffusers" line per jax mode
(diffusers' seconds / the mode's seconds); the JSON line gets `reference` (the torch result) and
`speedup_vs_diffusers` ({mode: ratio}).
Every mode is compared with diffusers' untiled decode: `enable_tiling` cannot be made to decode our tiles. Its
tile size and stride can be set to ours (8·tile, 8·(tile - overlap) pixels), but it steps tiles from 0 by the stride
and keeps partial tiles at the far edges (60x104 latent, tile 32, overlap 8: 3x5 tiles, the last row 12 latent
pixels high, the last column 8 wide), where ours are all tile-sized with the last one moved back to the edge (3x4
tiles of 32x32), and the blends differ. A "tiled" ratio is therefore tiled wanjax against untiled diffusers.

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
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
GIB = 2**30

from benchmarks import cli  # noqa: E402
MODES = ("chunked", "tiled", "full")
REFERENCES = ("diffusers", "none")
REFERENCE_MODE = "diffusers"   # the hidden --mode value of the reference subprocess


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


def apply_conv_forms(args):
  """Selects the conv forms of `--conv-out`, `--conv3d` and `--upsample` (module-level names in
  `wanjax.vae.layers`, read when the decode is traced: this process traces nothing before)."""
  import jax.numpy as jnp
  from wanjax.vae import layers as vae_layers
  if args.conv_out == "float32":   # the float32-product form (before wanjax.nn.matmul_output_dtype), for comparison
    vae_layers.conv_output_dtype = lambda compute_dtype: jnp.float32
  vae_layers.conv3d_form = lambda: args.conv3d
  vae_layers.upsample_form = lambda: args.upsample


def run_mode(args):
  import jax
  import numpy as np
  from flax import nnx
  from wanjax.vae import create_vae, decode_latent, get_config

  apply_conv_forms(args)
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

  from benchmarks.flops import program_flops
  flops, _ = program_flops(fn, state, latent)

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
  prof = {}
  if args.profile:   # after the timed runs: the trace's own cost is not in `sec`
    from benchmarks.dit_layer_breakdown import kernels_by_op, profile_block
    prof = profile_block(compiled, (state, latent), args.profile, args.profile_top, all_rows=True)
    prof["by_op"] = kernels_by_op(prof.pop("all_kernels"))
  return dict(mode=args.mode, device=dev.device_kind, platform=dev.platform, model=args.model,
              policy=args.policy, conv_out=args.conv_out, conv3d=args.conv3d, upsample=args.upsample,
              flops=flops, tflops=flops / sec / 1e12, **prof,
              video=[frames, h, w], latent=list(latent_shape), tile=tile,
              overlap=args.overlap if tile else None, sec=sec, compile_s=compile_s, first_call_s=first_s,
              init_s=init_s, peak_gb=peak or 0.0, state_in_use_gb=state_in_use, state_peak_gb=state_peak,
              compile_peak_gb=compile_peak, first_call_peak_gb=first_peak, in_use_after_gb=in_use, **xla_mem,
              out_shape=list(out.shape), finite=bool(np.isfinite(np.asarray(out)).all()))


def diffusers_kwargs(cfg) -> dict:
  """`AutoencoderKLWan` keywords for the architecture of the jax `VAEConfig` `cfg` (the names of `_video_vae`;
  no attention scales and no dropout, as in Wan2.1 and in wanjax)."""
  return dict(base_dim=cfg.dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
              temperal_downsample=list(cfg.temperal_downsample), attn_scales=[], dropout=0.0,
              latents_mean=list(cfg.latents_mean), latents_std=list(cfg.latents_std))


def reference_available() -> bool:
  """Whether torch and diffusers are installed (looked up without importing torch in this process)."""
  import importlib.util
  return all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers"))


class ReferenceUnavailable(Exception):
  """torch or diffusers' AutoencoderKLWan cannot be imported in the reference subprocess."""


def run_reference(args):
  """diffusers `AutoencoderKLWan.decode` on the same architecture, latent shape and dtype (see the module doc)."""
  try:
    import torch
    from diffusers import AutoencoderKLWan
  except ImportError as e:
    raise ReferenceUnavailable(f"{type(e).__name__}: {e}") from None
  import numpy as np
  from wanjax.vae.config import get_config

  cfg = get_config(args.model)
  frames, h, w = args.frames, args.height, args.width
  latent_shape = (1, cfg.z_dim, 1 + (frames - 1) // 4, h // 8, w // 8)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = torch.float32 if args.policy == "float32" else torch.bfloat16
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.manual_seed(0)
  t0 = time.perf_counter()
  with torch.device("meta"):
    model = AutoencoderKLWan(**diffusers_kwargs(cfg))
  for key, wan21 in (("is_residual", False), ("patch_size", None)):   # Wan2.2 switches, absent before 0.35
    if getattr(model.config, key, wan21) != wan21:
      raise RuntimeError(f"diffusers AutoencoderKLWan defaults to {key}={getattr(model.config, key)!r}, not the "
                         f"Wan2.1 {wan21!r}")
  model = model.to_empty(device=dev)
  weights = dict(model.named_parameters())
  with torch.no_grad():   # torch's default conv init (bound 1/sqrt(fan_in), bias too), norm scales 1: as create_vae
    for name, p in weights.items():
      if name.endswith("gamma"):
        p.fill_(1.0)
      else:
        kernel = weights[name[:-len("bias")] + "weight"] if name.endswith("bias") else p
        bound = 1.0 / float(np.prod(kernel.shape[1:])) ** 0.5
        p.uniform_(-bound, bound)
  model = model.to(dtype).eval()
  assert not model.use_tiling and not model.use_slicing
  mean = torch.tensor(cfg.latents_mean, device=dev).view(1, -1, 1, 1, 1)
  std = torch.tensor(cfg.latents_std, device=dev).view(1, -1, 1, 1, 1)
  gen = torch.Generator(device="cpu").manual_seed(0)
  # The pipeline hands decode unnormalised latents: ours are N(0, 1) after normalisation.
  latent = (torch.randn(latent_shape, generator=gen).to(dev) * std + mean).to(dtype)

  def sync():
    if dev == "cuda":
      torch.cuda.synchronize()
  sync()
  init_s = time.perf_counter() - t0
  state_gb = None
  if dev == "cuda":
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    state_gb = torch.cuda.memory_allocated() / GIB
  with torch.no_grad():
    t0 = time.perf_counter()
    out = model.decode(latent, return_dict=False)[0]
    sync()
    first_s = time.perf_counter() - t0
    finite = bool(torch.isfinite(out.float()).all())
    out_shape = list(out.shape)
    del out
    times = []
    for _ in range(args.iters):
      t0 = time.perf_counter()
      model.decode(latent, return_dict=False)
      sync()
      times.append(time.perf_counter() - t0)
  import diffusers
  return dict(framework="diffusers", version=diffusers.__version__, torch=torch.__version__,
              device=torch.cuda.get_device_name() if dev == "cuda" else "cpu", platform=dev, model=args.model,
              policy=args.policy, dtype=str(dtype).removeprefix("torch."), tf32=False,
              decode_path="frame-by-frame, causal cache, untiled", video=[frames, h, w], latent=list(latent_shape),
              sec=float(np.median(times)), first_call_s=first_s, init_s=init_s,
              peak_gb=torch.cuda.max_memory_allocated() / GIB if dev == "cuda" else 0.0, state_gb=state_gb,
              out_shape=out_shape, finite=finite)


def print_profile(r):
  """The --profile tables of one mode: time by kind of kernel, then the longest kernels and the idle gaps."""
  from benchmarks.dit_layer_breakdown import print_kernels
  total = r["kernel_ms_per_block"]
  print(f"{'':>8} kernel time by kind ({r['profile_calls']} traced decodes, {total:.1f} ms of kernels per decode):")
  for row in r.get("by_op") or []:
    print(f"{'':>8} {row['ms']:10.2f} ms {row['pct']:5.1f} %  {row['count']:8g} launches  {row['op']}")
  print_kernels(dict(r, block_ms=r["sec"] * 1e3, device=r["platform"]), "decode")


def _gb(v):
  return "n/a" if v is None else f"{v:.3g}"


def main():
  from wanjax.vae.layers import CONV3D_FORMS, UPSAMPLE_FORMS
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
  p.add_argument("--reference", choices=REFERENCES,
                 help="torch reference timed in the same run: diffusers AutoencoderKLWan (default where torch and "
                      "diffusers are installed) or none")
  p.add_argument("--conv-out", default="model", choices=["model", "float32"],
                 help="dtype the convs write before their bias: the model's (bf16 under --policy bf16) or float32 "
                      "(the form before session 12, to compare)")
  p.add_argument("--conv3d", default="conv3d", choices=CONV3D_FORMS,
                 help="causal 3-D convs as one 3-D conv, or fold2d: temporal taps folded into the input channels of "
                      "a 2-D conv (wanjax.vae.layers.conv3d_form)")
  p.add_argument("--upsample", default="repeat", choices=UPSAMPLE_FORMS,
                 help="nearest x2 + 3x3 conv as repeat-then-conv, or subpixel: four 2x2 convs of the low-resolution "
                      "input (wanjax.vae.layers.upsample_form)")
  p.add_argument("--profile", type=int, default=0, metavar="N",
                 help="after timing, trace N decodes (CUDA graphs off) and print the kernel table, the time by "
                      "kind of kernel (convolutions, fusions, copies) and the device's idle gaps")
  p.add_argument("--profile-top", type=int, default=15, metavar="K", help="rows of the --profile kernel table")
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
  if args.profile < 0 or args.profile_top < 1:
    p.error(f"--profile={args.profile} must be >= 0 (0 = off) and --profile-top={args.profile_top} >= 1")
  if args.overlap < 0 or args.iters < 1:
    p.error(f"--overlap={args.overlap} must be >= 0 and --iters={args.iters} >= 1")
  if args.mode == REFERENCE_MODE:
    try:
      print("RESULT " + json.dumps(run_reference(args)))
    except ReferenceUnavailable as e:
      print(f"UNAVAILABLE {e}")
    return
  if args.mode:
    if args.profile:
      from benchmarks.dit_layer_breakdown import disable_command_buffers
      disable_command_buffers()   # before jax starts in this child: the trace then shows every kernel
    print("RESULT " + json.dumps(run_mode(args)))
    return
  from wanjax.vae import get_config
  get_config(args.model)   # an unknown preset fails here, once, not in every child
  reference = args.reference
  if reference is None:
    reference = "diffusers" if reference_available() else "none"
    if reference == "none":
      print("note: torch and diffusers are not both installed; no diffusers reference (--reference none)")
  results = {}
  for mode in modes:
    r = results[mode] = _child(mode)
    if r is None:
      continue
    print(f"{mode:>8} on {r['device']} ({r['platform']}): {r['model']} {r['policy']} (conv outputs "
          f"{r['conv_out']}), video {r['video']} <- latent "
          f"{r['latent']}, tile {r['tile']} overlap {r['overlap']}: {r['sec']:.3f} s steady, compile "
          f"{r['compile_s']:.1f} s, peak {r['peak_gb']:.2f} GiB, finite {r['finite']}")
    print(f"{'':>8} forms: 3-D convs {r['conv3d']}, upsample {r['upsample']}; {r['flops'] / 1e12:.4g} TFLOP of "
          f"convolutions and matmuls per decode = {r['tflops']:.4g} TFLOP/s"
          + (" (XLA's CUDA graphs off for --profile)" if args.profile else ""))
    if args.profile:
      print_profile(r)
    print(f"{'':>8} XLA plan: temp {_gb(r['xla_temp_gb'])} GiB, arguments {_gb(r['xla_argument_gb'])}, output "
          f"{_gb(r['xla_output_gb'])}, code {_gb(r['xla_code_gb'])}; allocator in use/peak after weights "
          f"{_gb(r['state_in_use_gb'])}/{_gb(r['state_peak_gb'])} GiB, peak after compile "
          f"{_gb(r['compile_peak_gb'])}, after first call {_gb(r['first_call_peak_gb'])}, after all runs "
          f"{_gb(r['peak_gb'])}")
  summary = dict(benchmark="vae_decode", results=results)
  failed = [m for m, r in results.items() if r is None]
  if reference == "diffusers":
    ref = _child(REFERENCE_MODE, explicit=args.reference is not None)
    if ref == "unavailable":
      ref = None
    else:
      summary.update(reference=ref, speedup_vs_diffusers={})
      if ref is None:
        failed.append(REFERENCE_MODE)
    if ref:
      print(f"{'diffusers':>8} on {ref['device']} ({ref['platform']}): AutoencoderKLWan {ref['model']} {ref['dtype']}"
            f" (diffusers {ref['version']}, torch {ref['torch']}, TF32 off), latent {ref['latent']}, "
            f"{ref['decode_path']}: {ref['sec']:.3f} s steady, first call {ref['first_call_s']:.1f} s, peak "
            f"{ref['peak_gb']:.2f} GiB, finite {ref['finite']}")
      for mode, r in results.items():
        if r is not None:
          x = summary["speedup_vs_diffusers"][mode] = ref["sec"] / r["sec"]
          what = "tiled wanjax vs untiled diffusers" if mode == "tiled" else mode
          print(f"speed-up of wanjax over diffusers: {x:.3f}x ({what})")
  print(json.dumps(summary))
  cli.exit_if_failed(failed)


def _child(mode, explicit=True):
  """Runs `mode` (a jax mode or the reference) in a subprocess with this command line; its result dict, None when
  it failed (its stderr printed), or "unavailable" for a reference that cannot import torch/diffusers (an error
  when `--reference` was given, a note when it was the default)."""
  result, proc = cli.run_child([sys.executable, __file__, "--mode", mode] + sys.argv[1:], preallocate=False)
  missing = [l[12:] for l in proc.stdout.splitlines() if l.startswith("UNAVAILABLE ")]
  if missing and not proc.returncode:
    if not explicit:
      print(f"note: no diffusers reference ({missing[-1]}); --reference none skips it")
      return "unavailable"
    print(f"{mode} run failed: --reference diffusers needs torch and diffusers.AutoencoderKLWan ({missing[-1]})")
    return None
  if result is None:
    cli.child_failed(mode, proc)
  return result


if __name__ == "__main__":
  cli.run(main)
