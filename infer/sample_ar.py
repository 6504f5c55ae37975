"""The block-wise autoregressive branch of `infer.sample` (presets with `sampler="ar"`: Self-Forcing, CausVid,
LightX2V CausVid): config → checks → encoders → `wanjax.sampling_ar.generate` with streaming decode into the mp4
→ sidecar JSON with the time to first frame (`timings.ttff_s`) and the generation throughput
(`generated_frames_per_s`, frames decoded per wall-clock second of sampling, compile included; `video_fps` is the
mp4's playback rate).

  python -m infer.sample --config configs/sample/self_forcing.py --config.weights=... --config.prompt=...
  python -m infer.sample --config configs/sample/self_forcing.py:runlocal --config.output_dir=/tmp/out  # CPU

Reuses `infer.sample`'s checks, encoders, builders and atomic writers; only the sampling differs.
"""

import os
import time

from absl import logging

from wanjax.errors import UsageError

_UPDATE = {"consistency": "renoise", "euler": "euler", "unipc": "unipc"}


def ar_options(c):
  """`AROptions` from the config (`timesteps`, `shift`, `solver` and the `ar` group)."""
  from wanjax.sampling_ar import AROptions
  if c.solver not in _UPDATE:
    raise UsageError(f"solver={c.solver!r} is not an AR update; valid: {', '.join(_UPDATE)}")
  if not c.timesteps:
    raise UsageError("AR sampling needs a step list; set --config.timesteps='(1000, 750, 500, 250)'")
  a = c.ar
  return AROptions(
      frames_per_block=a.frames_per_block, steps=tuple(c.timesteps), shift=c.shift, warp=a.warp,
      sigma_lookup=a.sigma_lookup, update=_UPDATE[c.solver], context_pass=a.context_pass,
      context_noise=a.context_noise, cache_frames=a.cache_frames, rolling=a.rolling, sink_frames=a.sink_frames,
      long_video=a.long_video, num_segments=a.num_segments, overlap_frames=a.overlap_frames,
      kv_buckets=a.kv_buckets, cache_in_carry=a.cache_in_carry).validate()


def noise_frames(opts, frames):
  """Latent frames of noise the run consumes for `frames` latent frames per rollout/fragment."""
  from wanjax.sampling_ar import fragment_frames
  if opts.long_video == "rollouts":
    return opts.num_segments * frames
  if opts.long_video == "fragments":
    return fragment_frames(frames, opts.frames_per_block, opts.num_segments)
  return frames


def denoised_blocks(opts, frames):
  """Blocks the run denoises (each consumes steps−1 re-noise draws) for `frames` latent frames per
  rollout/fragment: rollouts after the first start from a teacher-forced overlap of `overlap_frames`."""
  n = noise_frames(opts, frames)
  if opts.long_video == "rollouts":
    n -= (opts.num_segments - 1) * opts.overlap_frames
  return n // opts.frames_per_block


def _frames_for(nf, k):
  """Pixel frames (4k+1) whose latent frames are k blocks of nf."""
  return 1 + 4 * (k * nf - 1)


def check_frames(c, opts, f):
  """Edge checks of `f`, the latent frames of one clip / rollout / fragment, against the block size, the mode
  and the KV cache; each error names the pixel frames and the nearest valid ones. Nothing is built yet."""
  nf = opts.frames_per_block
  per = {"none": "", "rollouts": " per rollout", "fragments": " per fragment"}[opts.long_video]
  if f % nf:
    near = " or ".join(str(_frames_for(nf, k)) for k in (f // nf, f // nf + 1) if k >= 1)
    raise UsageError(f"frames={c.frames} gives {f} latent frames{per}, not a multiple of ar.frames_per_block={nf}; "
                     f"use frames = 1 + 4·(k·{nf} − 1), e.g. {near}")
  if opts.long_video == "rollouts" and f <= opts.overlap_frames:
    raise UsageError(f"frames={c.frames} gives {f} latent frames per rollout, no more than ar.overlap_frames="
                     f"{opts.overlap_frames}: later rollouts would add no frame; use frames >= "
                     f"{_frames_for(nf, opts.overlap_frames // nf + 1)} or a smaller overlap_frames")
  if opts.long_video == "fragments" and f <= nf:
    raise UsageError(f"frames={c.frames} gives {f} latent frames per fragment, one block of {nf}: later fragments "
                     f"would add no frame; use frames >= {_frames_for(nf, 2)}")
  if not opts.rolling and f > opts.cache_frames:
    fit = opts.cache_frames // nf
    hint = f"use frames <= {_frames_for(nf, fit)}, " if fit else ""
    raise UsageError(f"frames={c.frames} gives {f} latent frames{per}, more than the KV cache of ar.cache_frames="
                     f"{opts.cache_frames}; {hint}raise ar.cache_frames, or set ar.rolling=True (with "
                     f"ar.sink_frames) or an ar.long_video mode")


def _load_renoise(path, opts, n_steps, shape, num_blocks):
  """`[num_blocks, steps−1, 16, nfpb, H, W]` (torch layout) → `[num_blocks, steps−1, 1, nfpb, H, W, 16]`."""
  import numpy as np
  if opts.update != "renoise":
    raise UsageError(f"renoise={path!r} is only consumed by the fresh-noise update (solver='consistency'); the "
                     f"{opts.update} update draws no noise")
  try:
    a = np.load(os.path.expanduser(path))
  except Exception as e:  # noqa: BLE001 - any reader failure is the user's file
    raise UsageError(f"renoise {path!r} is not a readable .npy ({e})") from None
  _, _, h, w, c = shape
  want = (num_blocks, n_steps - 1, c, opts.frames_per_block, h, w)
  if a.shape != want:
    raise UsageError(f"renoise {path!r} has shape {a.shape}; expected {list(want)} = [num_blocks, steps−1, C, "
                     f"frames_per_block, H, W] (torch layout)")
  return np.ascontiguousarray(a.astype(np.float32).transpose(0, 1, 3, 4, 5, 2))[:, :, None]


def run_ar(c):
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  from tqdm import tqdm
  from infer import sample as S
  from infer.models import weight_bytes
  from wanjax import sampling_ar, sharding, video

  opts = ar_options(c)
  if c.get("guidance", 0.0):
    raise UsageError(f"guidance={c.guidance}: the AR samplers run no guidance embedding (they are CFG-free "
                     f"distilled models); use guidance=0")
  # The shared checks load init_noise for one clip; long videos need more frames, so it is loaded here.
  plain = ml_collections.ConfigDict(c.to_dict())
  plain.init_noise = ""
  plan = S.check(plain)
  if plan.model_type != "t2v":
    raise UsageError(f"AR sampling supports t2v models; model={c.model!r} is {plan.model_type}")
  if c.cfg_scale != 1.0:
    raise UsageError(f"cfg_scale={c.cfg_scale}: the AR samplers are CFG-free (distilled); use cfg_scale=1")
  from infer.models import use_compilation_cache
  use_compilation_cache(c.compilation_cache)
  c, seed = S.resolve_seed(c)
  name = c.output_name or f"{c.model}_ar_{seed}_{time.strftime('%Y%m%d_%H%M%S')}"
  out_dir = os.path.expanduser(c.output_dir)
  S.check_outputs(c, out_dir, name)
  mesh = sharding.make_mesh(c.mesh)
  rules = S.sharding_rules(c)   # a bad --config.sharding_overrides fails here, before any model loads
  timings = {}

  b, f, h, w, ch = S.latent_shape(plan)
  check_frames(c, opts, f)
  shape = (b, noise_frames(opts, f), h, w, ch)
  n_steps = len(sampling_ar.schedule(opts)[0])
  init_noise = S._load_init_noise(S._exists("init_noise", c.init_noise, "an .npy"), shape) if c.init_noise else None
  renoise = None
  if c.renoise:
    renoise = _load_renoise(S._exists("renoise", c.renoise, "an .npy"), opts, n_steps, shape,
                            denoised_blocks(opts, f))

  t0 = time.perf_counter()
  context, _ = S.encode_text(c, plan, mesh)
  timings["text_encode_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  dit = S.build_dit(c, plan, mesh)
  vae = S.build_vae(c, mesh)
  timings["load_s"] = time.perf_counter() - t0

  key = jax.random.key(seed)
  noise_key, loop_key = jax.random.split(key)
  noise = jnp.asarray(init_noise) if init_noise is not None else jax.random.normal(noise_key, shape, jnp.float32)
  mp4 = os.path.join(out_dir, name + ".mp4")
  frames_all = []
  # Progress in decoded pixel frames as blocks finish (the first block's wait includes compiling).
  bar = tqdm(total=c.frames if opts.long_video == "none" else None, desc="frames", unit="frame")
  with bar, sharding.activate(mesh, rules), video.VideoWriter(mp4, fps=c.fps) as writer:
    def on_frames(frames):
      frames = np.asarray(jax.device_get(frames))[0]
      if c.stream:
        writer.append(frames)
      frames_all.append(frames)
      bar.update(frames.shape[0])

    res = sampling_ar.generate(dit, jnp.asarray(context), noise, opts, rng=loop_key, renoise=renoise, vae=vae,
                               on_frames=on_frames)
    if not c.stream:
      writer.append(np.concatenate(frames_all))
  timings.update(sampling_ar_s=res.stats["total_s"], ttff_s=res.stats.get("ttff_s", 0.0))
  frames = np.concatenate(frames_all)
  S.warn_nonfinite(res.latents)

  t0 = time.perf_counter()
  outputs = {"video": mp4}
  if c.save_latents:
    S.save_npy(os.path.expanduser(c.save_latents), np.asarray(res.latents).transpose(0, 4, 1, 2, 3))
    outputs["latents"] = c.save_latents
  if c.save_frames:
    outputs["frames"] = video.write_png_frames(os.path.join(out_dir, name + "_frames"), frames)
  timings["write_s"] = time.perf_counter() - t0
  t_s, sig = sampling_ar.schedule(opts)
  sidecar = {
      "config": c.to_dict(), "seed": seed, "model_type": plan.model_type, "width": plan.width,
      "height": plan.height, "frames": int(frames.shape[0]), "latent_shape": list(res.latents.shape),
      "sigmas": [float(s) for s in sig], "timesteps": [float(t) for t in t_s], "num_steps": len(t_s),
      "cfg": False, "guidance": 0.0, "vae_dtype": S.vae_policy(c),
      "model_calls": res.stats["model_calls"], "blocks": res.stats["blocks"],
      # Throughput, not the video's frame rate (that is `video_fps`): old sidecars called this "fps".
      "generated_frames_per_s": round(frames.shape[0] / res.stats["total_s"], 3), "video_fps": float(c.fps),
      "timings": {k: round(v, 4) for k, v in timings.items()}, "outputs": outputs,
      "devices": [str(d) for d in jax.devices()][:8], "mesh": dict(mesh.shape),
      "dit_weight_bytes": weight_bytes(dit),
  }
  S.save_json(os.path.join(out_dir, name + ".json"), sidecar)
  logging.info("wrote %s (%d frames at %g fps, %d model calls); first frame after %.2f s, %.2f frames generated "
               "per second (compile included)", mp4, frames.shape[0], c.fps, res.stats["model_calls"],
               timings["ttff_s"], sidecar["generated_frames_per_s"])
  return sidecar
