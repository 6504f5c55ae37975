"""Text/image-to-video sampling CLI: config → checks → encoders → one compiled denoise loop → VAE → mp4 + JSON.

Mirrors the reference `generate.py` + `wan/text2video.py` / `wan/image2video.py` (spec `wan_model.md` §6.5–6.6)
and LightX2V's 4-step runner (`distillation.md` §5):

  python -m infer.sample --config configs/sample/t2v_14b.py --config.weights=/ckpt/Wan2.1-T2V-14B \
    --config.text_encoder=/ckpt/umt5 --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae \
    --config.prompt="A cat surfing a wave at sunset" --config.mesh="data=2"
  python -m infer.sample                                                 # toy-world 4-step student, CPU
  python -m infer.sample --config configs/sample/tiny.py --config.output_dir=/tmp/out    # random tiny models

Every user error is found before anything is compiled or written (`infer/plan.py`: config -> checked `Plan`)
and printed as one line (exit code 2); a device that runs out of memory is one line too, naming the device, the
allocation and the settings that shrink the run (exit code 1).
Outputs, all atomic: `<output_dir>/<name>.mp4`, `<name>.json` (every setting, the seed, shapes and timings),
optionally `<name>_frames/` (PNG) and the final latent (`--config.save_latents`).
"""

import json
import os
import sys
import time

from absl import app, flags, logging

from infer import demo
from infer.plan import (  # noqa: F401 - re-exported: `sample.check`, `sample.Plan`, ... are this CLI's API
    PROMPT_GRAMMARS, T2V_SIZE_MULTIPLE, VAE_DTYPES, Plan, _exists, _load_image, _load_init_noise,
    _load_text_embeddings, _parse_size, check, check_dit_interface, check_prompt_grammar, latent_shape, use_cfg,
    vae_policy)
from wanjax import sampling, sharding
from wanjax.errors import UsageError, out_of_memory_message
from wanjax.fileio import atomic_open



# ============================================================================================ building blocks

def load_text_encoder_for(c, plan, mesh):
  """The umT5 encoder a preset needs, or None when contexts come from `text_embeddings` or are hashed (tiny)."""
  if plan.text_embeddings is not None or c.random_init:
    return None
  from infer.models import resolve_model
  from wanjax.text.encode import load_text_encoder
  return load_text_encoder(resolve_model(os.path.expanduser(c.text_encoder), family="umt5"),
                           os.path.expanduser(c.tokenizer), mesh=mesh, max_length=plan.dit_cfg.text_len,
                           rules=sharding_rules(c))


def encode_with(encoder, c, plan):
  """(context, negative_context), each float32 `[1, text_len, text_dim]`, with a loaded (or no) encoder."""
  from configs.common import negative_prompt
  import numpy as np
  neg = negative_prompt(plan.model_type, c.negative_prompt)
  if plan.text_embeddings is not None:
    return plan.text_embeddings["context"], plan.text_embeddings["negative_context"]
  cfg = plan.dit_cfg
  if c.random_init:
    return (demo.hashed_context(c.prompt, cfg.text_len, cfg.text_dim),
            demo.hashed_context(neg, cfg.text_len, cfg.text_dim))
  ctx, _ = encoder.encode([c.prompt, neg])
  ctx = np.asarray(ctx, np.float32)
  return ctx[:1], ctx[1:]


def encode_text(c, plan, mesh):
  """(context, negative_context), each float32 `[1, text_len, text_dim]`; the encoder is freed afterwards."""
  return encode_with(load_text_encoder_for(c, plan, mesh), c, plan)


def model_seed(c):
  """Seed of random_init models: `c.seed`, 0 for a server preset's seed=-1 (the CLIs resolve -1 first)."""
  return max(int(c.seed), 0)


def resolve_seed(c):
  """(c, seed); seed=-1 draws one into a copy of `c`: models, noise and sidecar use it, so it reproduces the run."""
  import ml_collections
  import numpy as np
  if c.seed >= 0:
    return c, int(c.seed)
  seed = int(np.random.SeedSequence().entropy % (2**31))
  c = ml_collections.ConfigDict(c.to_dict())
  c.seed = seed
  return c, seed


def sharding_rules(c):
  """The logical-axis rules of `--config.sharding_overrides` (rows before `wanjax.sharding.RULES`); a bad row is one
  UsageError naming it. Used to place the DiT's weights and to constrain the activations."""
  return sharding.override_rules(c.get("sharding_overrides", ""))


def build_dit(c, plan, mesh, *, cast_kernels=True):
  """The DiT (converted weights, or random for the demo) with `plan.loras` merged, then quantised (`c.quant`);
  `cast_kernels`: as `infer.models.adapt_dit`."""
  from flax import nnx
  from infer.models import adapt_dit
  if c.random_init:
    from wanjax.dit.model import WanDiT
    dit = demo.random_model(lambda: WanDiT(plan.dit_cfg, policy=c.dtype, rngs=nnx.Rngs(0), attn_impl=c.attn_impl,
                                           scan_unroll=c.scan_unroll), model_seed(c), mesh=mesh,
                            rules=sharding_rules(c))
  else:
    from infer.models import resolve_dit
    from wanjax.dit.load import load_dit
    # Kernels read straight into bf16 when nothing is merged into them or quantised from them after loading; with
    # LoRAs to merge or a quantisation to come, only those the files store in bf16 (the merge or the quantiser
    # then gives the same values); with both, none (the quantiser must see the unrounded merge).
    from infer.models import kernels_at_load
    at_load = kernels_at_load(cast_kernels, bool(plan.loras), c.quant)
    dit = load_dit(resolve_dit(plan.weights), policy=c.dtype, mesh=mesh, expect_model_type=plan.model_type,
                   attn_impl=c.attn_impl, scan_unroll=c.scan_unroll, rules=sharding_rules(c),
                   cast_kernels=at_load)
    check_dit_interface(dit.cfg, plan.dit_cfg, plan.weights, c.model)   # raw checkpoints: known once converted
  return adapt_dit(dit, plan.loras, allow_unmatched=c.lora_allow_unmatched, quant=c.quant, cast_kernels=cast_kernels)


def build_vae(c, mesh):
  """The VAE (converted weights, or random tiny for the demo) under the `config.vae_dtype` policy."""
  from flax import nnx
  policy = vae_policy(c)
  if c.random_init:
    from wanjax.vae.config import get_config
    from wanjax.vae.model import WanVAE
    return demo.random_model(lambda: WanVAE(get_config("tiny"), policy=policy, rngs=nnx.Rngs(0)), model_seed(c) + 1,
                             mesh=mesh, rules=sharding_rules(c))
  from infer.models import resolve_model
  from wanjax.vae.load import load_vae
  return load_vae(resolve_model(os.path.expanduser(c.vae), family="vae"), policy=policy, mesh=mesh,
                  rules=sharding_rules(c))


def build_clip(c, plan, mesh):
  """The I2V CLIP tower (converted weights, or random for the demo); under bf16 its matmuls' kernels are stored
  in bf16 (`wanjax.nn.cast_kernels`: same features, half the 632M-parameter tower's bytes)."""
  from flax import nnx
  from wanjax.nn import cast_kernels
  policy = "float32" if c.dtype == "float32" else "bf16"
  if c.random_init:
    from wanjax.image.clip import CLIPVisionTower
    cfg = demo.clip_preset_for(plan.dit_cfg)[1]
    tower = demo.random_model(lambda: CLIPVisionTower(cfg, policy=policy, rngs=nnx.Rngs(0)), model_seed(c) + 2,
                              mesh=mesh, rules=sharding_rules(c))
  else:
    from infer.models import resolve_model
    from wanjax.image.load import load_clip
    tower = load_clip(resolve_model(os.path.expanduser(c.clip), family="clip"), policy=policy, mesh=mesh,
                      rules=sharding_rules(c))
  cast_kernels(tower)
  return tower


def i2v_condition_with(tower, plan, vae):
  """(clip_fea `[1, 257, 1280]`, y `[1, F, h, w, 20]`) for the I2V DiT (§1.14), with a loaded CLIP tower."""
  import jax.numpy as jnp
  from wanjax.image import i2v
  from wanjax.image.clip import clip_features
  clip_fea = jnp.asarray(clip_features(tower, plan.image), jnp.float32)
  _, f, lat_h, lat_w, _ = latent_shape(plan)
  video = i2v.condition_video(plan.image, plan.height, plan.width, plan.frames)
  cond_latent = vae.encode(video[None])
  y = i2v.build_y(jnp.asarray(i2v.i2v_mask(f, lat_h, lat_w, plan.frames))[None], cond_latent)
  return clip_fea, y


def i2v_condition(c, plan, vae, mesh):
  """(clip_fea `[1, 257, 1280]`, y `[1, F, h, w, 20]`) for the I2V DiT (§1.14)."""
  return i2v_condition_with(build_clip(c, plan, mesh), plan, vae)


def conditions(context, neg_context, cfg_scale, image_cond=None):
  """(cond, uncond) for `sampling`: cond = context + the I2V `clip_fea`/`y`; uncond (None when cfg_scale is 1)
  overrides only `context`, so both CFG branches see the same image conditioning, as the reference (§1.14)."""
  import jax.numpy as jnp
  cond = {"context": jnp.asarray(context), **(image_cond or {})}
  uncond = {"context": jnp.asarray(neg_context)} if cfg_scale != 1.0 else None
  return cond, uncond


# ============================================================================================ loaded pipeline

class Pipeline:
  """The models of one preset, loaded on first use and kept; `generate(c, plan)` runs one request on them.

  Shared by this CLI (one request; `keep_encoders=False` frees umT5 and CLIP after use, so they never sit
  beside the DiT) and `infer.serve` (built once at start, every model kept). Per request only `c`'s request
  fields may differ from the preset (prompt, negative prompt, seed, size, frames, steps, image); JAX caches
  the compiled denoise program per shape, as the params are arguments of the program.
  """

  def __init__(self, c, mesh, *, keep_encoders=True, cast_kernels=True):
    self.c, self.mesh, self.keep_encoders, self.cast_kernels = c, mesh, keep_encoders, cast_kernels
    self.dit = self.vae = self.denoise_fn = self.params = None
    self._text_encoder = self._clip = None

  def encode(self, c, plan):
    enc = self._text_encoder or load_text_encoder_for(c, plan, self.mesh)
    if self.keep_encoders:
      self._text_encoder = enc
    return encode_with(enc, c, plan)

  def load(self, plan):
    """Builds (or loads) the DiT and VAE once; the DiT is split into `(denoise_fn, params)` once."""
    if self.dit is None:
      self.dit = build_dit(self.c, plan, self.mesh, cast_kernels=self.cast_kernels)
      self.vae = build_vae(self.c, self.mesh)
      self.denoise_fn, self.params = sampling.model_denoiser(self.dit)

  def condition(self, plan):
    """I2V: (clip_fea, y) for `plan.image`."""
    tower = self._clip or build_clip(self.c, plan, self.mesh)
    if self.keep_encoders:
      self._clip = tower
    return i2v_condition_with(tower, plan, self.vae)

  def generate(self, c, plan, *, seed, progress=None, params=None, timings=None, on_denoise_start=None):
    """text → conditioning → noise → one compiled denoise loop → VAE decode.

    Returns (frames float32 `[T, H, W, 3]` in [−1, 1], latent `[1, F, H, W, C]`). progress: `fn(step_index)`
    per denoise step; on_denoise_start: `fn()` called once, compiled and just before the first step runs;
    params: DiT params to use instead of the loaded ones (e.g. with a LoRA merged); timings: dict filled with
    text_encode_s, load_s, compile_s, denoise_s, decode_s.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    context, neg_context = self.encode(c, plan)
    timings["text_encode_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    self.load(plan)
    image_cond = dict(zip(("clip_fea", "y"), self.condition(plan))) if plan.model_type == "i2v" else None
    timings["load_s"] = time.perf_counter() - t0
    cond, uncond = conditions(context, neg_context, c.cfg_scale if use_cfg(c) else 1.0, image_cond)
    if c.get("guidance", 0.0):   # guidance-embedded DiT: w·1000 on the timestep scale, float32 (A.2)
      cond["guidance"] = jnp.full((cond["context"].shape[0],), float(c.guidance) * 1000.0, jnp.float32)

    key = jax.random.key(seed)
    noise_key, loop_key = jax.random.split(key)
    noise = (jnp.asarray(plan.init_noise) if plan.init_noise is not None
             else jax.random.normal(noise_key, latent_shape(plan), jnp.float32))

    # One program, compiled apart from running (the compile is served from JAX's caches for a known shape).
    with sharding.activate(self.mesh, sharding_rules(c)):
      t0 = time.perf_counter()
      run_loop, args = sampling.compile_sample(
          self.denoise_fn, noise, sigmas=plan.sigmas, timesteps=plan.timesteps, solver=c.solver,
          cfg_scale=c.cfg_scale if use_cfg(c) else 1.0, cond=cond, uncond=uncond, rng=loop_key,
          params=self.params if params is None else params)
      timings["compile_s"] = time.perf_counter() - t0
      if on_denoise_start is not None:
        on_denoise_start()
      t0 = time.perf_counter()
      with sampling.progress_hook(progress or (lambda i: None)):
        latent = jax.block_until_ready(run_loop(*args))
      timings["denoise_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    frames = np.asarray(jax.device_get(self.vae.decode(latent)))[0]   # [T, H, W, 3] in [-1, 1]
    timings["decode_s"] = time.perf_counter() - t0
    return frames, latent


# ============================================================================================ outputs

def warn_nonfinite(latent):
  """Logs (and returns) the count of NaN/inf in the final latent: the mp4 is then black although the run ends."""
  import numpy as np
  bad = int(np.size(latent) - np.isfinite(np.asarray(latent)).sum())
  if bad:
    logging.warning("the final latent has %d non-finite values: the video is black or corrupt (a solver or "
                    "precision problem; try dtype=float32 or another solver)", bad)
  return bad


def save_npy(path, array):
  import numpy as np
  with atomic_open(path, "wb") as f:
    np.save(f, array)


def save_json(path, obj):
  with atomic_open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=True)


def check_output_dir(kind, path):
  """`path` is, or can be made as, a writable folder: its nearest existing ancestor is a writable directory."""
  probe = os.path.abspath(os.path.expanduser(path or "."))
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise UsageError(f"{kind} {path!r} cannot be a folder: {probe!r} is a file; pass another {kind}")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise UsageError(f"{kind} {path!r} is not writable (no write permission on {probe!r}); pass another {kind}")


def check_outputs(c, out_dir, name):
  """Edge checks of every output path, before anything is compiled: a run that cannot write its outputs (or
  would replace half of an earlier run's) fails here with nothing written."""
  check_output_dir("output_dir", out_dir)
  for suffix in (".mp4", ".json"):
    if os.path.isdir(os.path.join(out_dir, name + suffix)):
      raise UsageError(f"output {os.path.join(out_dir, name + suffix)!r} is a folder; pass another output_name")
  frames_dir = os.path.join(out_dir, name + "_frames")
  if c.save_frames and os.path.exists(frames_dir):
    raise UsageError(f"save_frames: {frames_dir!r} already exists (an earlier run's frames); pass another "
                     f"output_name or output_dir, or remove it")
  if c.save_latents:
    path = os.path.expanduser(c.save_latents)
    if os.path.isdir(path):
      raise UsageError(f"save_latents={c.save_latents!r} is a folder; pass a file name ending in .npy")
    check_output_dir("save_latents folder", os.path.dirname(os.path.abspath(path)))


# ============================================================================================ main

def run(c):
  import jax
  import numpy as np
  from tqdm import tqdm
  from infer.models import weight_bytes
  from wanjax import video

  if c.get("sampler", "loop") == "ar":   # block-wise autoregressive presets (configs/sample/self_forcing.py, ...)
    from infer.sample_ar import run_ar
    return run_ar(c)
  plan = check(c)
  from infer.models import use_compilation_cache
  use_compilation_cache(c.compilation_cache)
  c, seed = resolve_seed(c)
  name = c.output_name or f"{c.model}_{seed}_{time.strftime('%Y%m%d_%H%M%S')}"
  out_dir = os.path.expanduser(c.output_dir)
  check_outputs(c, out_dir, name)
  mesh = sharding.make_mesh(c.mesh)
  sharding_rules(c)   # a bad --config.sharding_overrides fails here, before any model loads
  timings = {}
  shape = latent_shape(plan)
  cfg_on = use_cfg(c)
  pipeline = Pipeline(c, mesh, keep_encoders=False)
  # The bar spans the denoise program only (opened when it starts, closed at its last step), so its rate and
  # time are the sampler's, not text encoding, loading, compiling and VAE decoding as well.
  bar = []

  def step(i):
    bar[0].update(1)
    if bar[0].n >= bar[0].total:
      bar[0].close()

  try:
    frames, latent = pipeline.generate(
        c, plan, seed=seed, progress=step, timings=timings,
        on_denoise_start=lambda: bar.append(tqdm(total=len(plan.timesteps), desc="denoise", unit="step")))
  finally:
    for b in bar:
      b.close()
  warn_nonfinite(latent)

  # ---- write (each file atomic; the sidecar last) ----
  t0 = time.perf_counter()
  outputs = {}
  if c.save_latents:
    save_npy(os.path.expanduser(c.save_latents), np.asarray(latent).transpose(0, 4, 1, 2, 3))
    outputs["latents"] = c.save_latents
  mp4 = os.path.join(out_dir, name + ".mp4")
  video.write_video(mp4, frames, fps=c.fps)
  outputs["video"] = mp4
  if c.save_frames:
    outputs["frames"] = video.write_png_frames(os.path.join(out_dir, name + "_frames"), frames)
  timings["write_s"] = time.perf_counter() - t0
  sidecar = {
      "config": c.to_dict(), "seed": seed, "model_type": plan.model_type, "width": plan.width,
      "height": plan.height, "frames": int(frames.shape[0]), "latent_shape": list(shape),
      "sigmas": [float(s) for s in plan.sigmas], "timesteps": [float(t) for t in plan.timesteps],
      "num_steps": len(plan.timesteps), "cfg": cfg_on, "guidance": float(c.get("guidance", 0.0)),
      "vae_dtype": vae_policy(c),
      "timings": {k: round(v, 4) for k, v in timings.items()}, "outputs": outputs,
      "devices": [str(d) for d in jax.devices()][:8], "mesh": dict(mesh.shape),
      "dit_weight_bytes": weight_bytes(pipeline.dit),
  }
  save_json(os.path.join(out_dir, name + ".json"), sidecar)
  logging.info("wrote %s (%d frames %dx%d); timings %s", mp4, frames.shape[0], plan.width, plan.height,
               sidecar["timings"])
  return sidecar


OOM_ADVICE = ("Try --config.dtype=bf16 or --config.quant=int8 (2 or 1 bytes per DiT block weight instead of 4), "
              "--config.vae_dtype=bf16, fewer --config.frames or a smaller --config.size, or --config.mesh "
              "over more devices.")


def main(argv):
  from infer import cli
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}; settings go through --config.<field>=...")
  try:
    run(flags.FLAGS.config)
  except UsageError as e:
    cli.fail(e)
  except KeyboardInterrupt:   # Ctrl-C: one line and 130, like the trainers (files are written whole or not at all)
    cli.interrupted("files are written whole or not at all, so no partial video is left")
  except Exception as e:   # noqa: BLE001  (an out-of-memory is one line; anything else keeps its traceback)
    msg = out_of_memory_message(e, OOM_ADVICE)
    if msg is None:
      raise
    cli.fail(msg, exit_code=1)


if __name__ == "__main__":
  # Defined here, not at import, so tests and tools can import this module without claiming the flag name.
  from infer import cli
  cli.define_config_flag(
      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "sample", "toyworld.py"),
      "Sampling preset (configs/sample/<preset>.py[:arg]); default: the embedded toy-world 4-step student.")
  app.run(main, flags_parser=cli.parse_flags)
