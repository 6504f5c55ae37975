"""End-to-end sampling benchmark: T2V-1.3B with random weights, umT5 encode, denoise, VAE decode.

  python benchmarks/sample.py                      # 81x480x832, bf16: 4-step distilled + CFG UniPC steps
  python benchmarks/sample.py --vae-policy bf16    # the same with a bf16 VAE (`config.vae_dtype=bf16`)
  python benchmarks/sample.py --small              # tiny models on CPU (smoke test)
  python benchmarks/sample.py --model t2v_14b --policy bf16_weights --quant int8 --cfg-steps 0   # 14B, int8 blocks
  python benchmarks/sample.py --model t2v_14b --policy bf16_weights --cfg-steps 0   # 14B 4-step, bf16 weights
  python benchmarks/sample.py --compilation-cache /tmp/jc   # twice: the second run's compile_total_s is the
                                                            # warm-cache start-up (infer.sample's default cache)

Measures, on the default device:
- umT5-XXL encode of prompt + negative prompt (random bf16 weights), compile apart from steady state;
- the 4-step CFG-free consistency sampler (LightX2V step list, shift 5): compile time and denoise time;
- the UniPC + CFG loop (batch of two) for `--cfg-steps` steps: seconds per step (the loop is linear in the
  number of steps, so the 50-step time is 50 x this); `--cfg-steps 0` skips it;
- `--quant int8|fp8`: the DiT's block matmuls weight-only quantised as `infer.sample`'s `config.quant` does
  (`wanjax.quant.quantize_model`, inside the jitted random init so no float copy of the blocks outlives it);
  the DiT's parameter bytes are printed as `dit_weight_gb`;
- Wan VAE decode of the final latent (chunked scan) under `--vae-policy` (float32 by default, as the reference
  and `infer.sample`; bf16 is `--config.vae_dtype=bf16` there), compile apart from steady state;
- peak device memory; compile_total_s, the sum of the four compiles above (the DiT and umT5 random inits are
  reported apart: converted weights are loaded, not initialised, in `infer.sample`). Prints one JSON line.
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


class _Results(dict):
  """Prints each figure as soon as it is measured (a run cut short by a timeout still reports)."""

  def __setitem__(self, k, v):
    super().__setitem__(k, v)
    print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}", flush=True)


def _timed(fn, *args, reps=1):
  """(output, median seconds of `fn(*args)` over `reps` calls after a warm-up call)."""
  import jax
  out = [None]

  def call():
    out[0] = jax.block_until_ready(fn(*args))
  sec = median_s(call, reps)
  return out[0], sec


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="t2v_1_3b")
  p.add_argument("--frames", type=int, default=81)
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--cfg-steps", type=int, default=None, help="UniPC + CFG steps timed (default 10, "
                 "2 with --small; 0 skips the CFG loop)")
  p.add_argument("--policy", default="bf16", help="DiT precision policy (bf16_weights: bf16 storage, for 14B)")
  p.add_argument("--f32-kernels", action="store_true",
                 help="keep the bf16 matmuls' kernels in float32, cast in every DiT call (the form before session 14)")
  p.add_argument("--quant", default="none", choices=("none", "int8", "fp8"),
                 help="weight-only quantisation of the DiT block matmuls (infer.sample's config.quant)")
  p.add_argument("--vae-policy", default="float32", choices=("float32", "bf16"),
                 help="VAE precision policy (infer.sample's config.vae_dtype)")
  p.add_argument("--skip-t5", action="store_true")
  p.add_argument("--skip-vae", action="store_true")
  p.add_argument("--small", action="store_true")
  p.add_argument("--compilation-cache", default="", help="JAX persistent compilation cache dir (as "
                 "infer.sample's config.compilation_cache); run twice to time a warm start")
  p.add_argument("--cache-min-compile-s", type=float, default=1.0, help="cache only programs that took at "
                 "least this long to compile (JAX's default 1 s; 0 caches everything, e.g. for --small)")
  args = p.parse_args()
  cli.apply_small(p, args, dict(model="tiny", frames=5, height=32, width=48), preset="model")

  import dataclasses
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from wanjax import quant as quantlib
  from wanjax import sampling, schedules
  from wanjax.dit.config import get_config
  from wanjax.dit.model import WanDiT
  from wanjax.text import umt5
  from wanjax.vae import config as vae_config
  from wanjax.vae.model import create_vae, decode_latent

  from infer.models import use_compilation_cache, weight_bytes
  cache_entries = None
  if args.compilation_cache:   # the same call infer.sample makes for config.compilation_cache
    os.makedirs(args.compilation_cache, exist_ok=True)
    cache_entries = len(os.listdir(args.compilation_cache))
    use_compilation_cache(args.compilation_cache, min_compile_s=args.cache_min_compile_s)
  if args.cfg_steps is None:
    args.cfg_steps = 2 if args.small else 10
  if args.cfg_steps < 0:
    p.error(f"--cfg-steps={args.cfg_steps}: must be >= 0 (0 skips the UniPC + CFG loop)")
  cli.check_frames(p, args.frames)
  if args.height % 16 or args.width % 16 or min(args.height, args.width) < 16:
    p.error(f"--height={args.height} and --width={args.width} must be positive multiples of 16")
  cfg = get_config(args.model)
  t5_cfg = umt5.get_config("tiny" if args.small else "umt5_xxl")
  if args.small:
    cfg = dataclasses.replace(cfg, text_dim=t5_cfg.dim)
  vcfg = vae_config.get_config("tiny" if args.small else "wan21")
  F = (args.frames - 1) // 4 + 1
  H, W = args.height // 8, args.width // 8
  res = _Results()
  res.update(device=jax.devices()[0].device_kind, model=args.model, frames=args.frames,
             size=f"{args.width}x{args.height}", latent=[F, H, W], policy=args.policy,
             quant=args.quant, f32_kernels=args.f32_kernels, vae_policy=args.vae_policy,
             compilation_cache=args.compilation_cache or None,
             cache_entries_at_start=cache_entries)
  print(dict(res), flush=True)

  # ---- text encoder
  key = jax.random.key(0)
  if args.skip_t5:
    ctx = jax.random.normal(key, (2, cfg.text_len, cfg.text_dim), jnp.float32)
  else:
    t0 = time.perf_counter()
    make = lambda: umt5.UMT5Encoder(t5_cfg, policy="bf16", rngs=nnx.Rngs(1))  # noqa: E731
    gd, _ = nnx.split(nnx.eval_shape(make))
    t5 = nnx.merge(gd, jax.jit(lambda: nnx.split(make())[1])())
    res["t5_init_s"] = time.perf_counter() - t0
    ids = jnp.zeros((2, cfg.text_len), jnp.int32).at[:, :40].set(7)
    mask = jnp.zeros((2, cfg.text_len), jnp.int32).at[:, :40].set(1)
    tgd, tst = nnx.split(t5)
    enc = jax.jit(lambda st, ids, mask: umt5.forward_t5(nnx.merge(tgd, st), ids, mask))
    t0 = time.perf_counter()
    enc_c = enc.lower(tst, ids, mask).compile()
    res["t5_compile_s"] = time.perf_counter() - t0
    ctx, res["t5_encode_s"] = _timed(enc_c, tst, ids, mask, reps=3)
    ctx = ctx.astype(jnp.float32)
    del t5, tst, enc, enc_c

  # ---- DiT
  t0 = time.perf_counter()
  def make():
    m = WanDiT(cfg, policy=args.policy, rngs=nnx.Rngs(0))
    if args.quant != "none":
      quantlib.quantize_model(m, args.quant)
    if not args.f32_kernels:   # as `infer.sample` runs it: bf16 matmuls' kernels stored in bf16 (same outputs)
      from wanjax.nn import cast_kernels
      cast_kernels(m)
    return m
  gd, _ = nnx.split(nnx.eval_shape(make))
  model = nnx.merge(gd, jax.jit(lambda: nnx.split(make())[1])())
  res["dit_init_s"] = time.perf_counter() - t0
  res["dit_weight_gb"] = weight_bytes(model) / 2**30
  denoise, params = sampling.model_denoiser(model)
  noise = jax.random.normal(key, (1, F, H, W, cfg.out_dim), jnp.float32)
  cond, uncond = {"context": ctx[:1]}, {"context": ctx[1:]}

  sig, ts = schedules.step_list_sigmas((1000, 750, 500, 250), 5.0)
  t0 = time.perf_counter()
  run4, a4 = sampling.compile_sample(denoise, noise, sigmas=sig, timesteps=ts, solver="consistency", cond=cond,
                                     rng=jax.random.key(1), params=params)
  res["4step_compile_s"] = time.perf_counter() - t0
  latent, res["4step_denoise_s"] = _timed(run4, *a4, reps=2)

  if args.cfg_steps > 0:
    sig, ts = schedules.unipc_sigmas(args.cfg_steps, 5.0)
    t0 = time.perf_counter()
    runc, ac = sampling.compile_sample(denoise, noise, sigmas=sig, timesteps=ts, solver="unipc", cfg_scale=5.0,
                                       cond=cond, uncond=uncond, params=params)
    res["cfg_compile_s"] = time.perf_counter() - t0
    _, tc = _timed(runc, *ac, reps=1)
    res["cfg_sec_per_step"] = tc / args.cfg_steps
    res["cfg_50_steps_s_est"] = 50 * res["cfg_sec_per_step"]
    del runc, ac
  del model, params, run4, a4

  # ---- VAE decode
  if not args.skip_vae:
    vae = create_vae(vcfg, policy=args.vae_policy)
    latent = latent[..., :vcfg.z_dim]
    vgd, vst = nnx.split(vae)
    dec = jax.jit(lambda st, z: decode_latent(nnx.merge(vgd, st), z))
    t0 = time.perf_counter()
    dec_c = dec.lower(vst, latent).compile()
    res["vae_compile_s"] = time.perf_counter() - t0
    video, res["vae_decode_s"] = _timed(dec_c, vst, latent, reps=2)
    res["video_shape"] = list(video.shape)
  res["compile_total_s"] = sum(res.get(k, 0.0) for k in ("t5_compile_s", "4step_compile_s", "cfg_compile_s",
                                                         "vae_compile_s"))
  if args.compilation_cache:
    res["cache_entries_at_end"] = len(os.listdir(args.compilation_cache))
  stats = jax.devices()[0].memory_stats() or {}
  res["peak_gb"] = stats.get("peak_bytes_in_use", 0) / 2**30
  e2e = res.get("t5_encode_s", 0) + res["4step_denoise_s"] + res.get("vae_decode_s", 0)
  dict.__setitem__(res, "e2e_4step_warm_s", e2e)
  parts = ["umT5 encode" if not args.skip_t5 else "", "4 DiT steps",
           f"{args.vae_policy} VAE decode" if not args.skip_vae else ""]
  print(f"{'e2e_4step_warm_s':>22}: {e2e:.3f}  ({' + '.join(x for x in parts if x)}, warm)", flush=True)
  print(json.dumps(res))


if __name__ == "__main__":
  cli.run(main)
