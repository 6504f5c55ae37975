"""Text/image-to-video sampling CLI: config → checks → encoders → one compiled denoise loop → VAE → mp4 + JSON.

Mirrors the reference `generate.py` + `wan/text2video.py` / `wan/image2video.py` (spec `wan_model.md` §6.5–6.6)
and LightX2V's 4-step runner (`distillation.md` §5):

  python -m infer.sample --config configs/sample/t2v_14b.py --config.weights=/ckpt/Wan2.1-T2V-14B \
    --config.text_encoder=/ckpt/umt5 --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae \
    --config.prompt="A cat surfing a wave at sunset" --config.mesh="data=2"
  python -m infer.sample                                                 # toy-world 4-step student, CPU
  python -m infer.sample --config configs/sample/tiny.py --config.output_dir=/tmp/out    # random tiny models

Every user error is found before anything is compiled or written and printed as one line (exit code 2).
Outputs, all atomic: `<output_dir>/<name>.mp4`, `<name>.json` (every setting, the seed, shapes and timings),
optionally `<name>_frames/` (PNG) and the final latent (`--config.save_latents`).
"""

import dataclasses
import json
import os
import sys
import time

from absl import app, flags, logging

from infer import demo
from wanjax import sampling, sharding
from wanjax.errors import UsageError
from wanjax.fileio import atomic_open

T2V_SIZE_MULTIPLE = 16   # VAE stride 8 × patch 2


# ============================================================================================ checks (the edge)

@dataclasses.dataclass
class Plan:
  """Everything decided from the config before any model is built."""
  dit_cfg: object
  model_type: str
  width: int
  height: int
  frames: int
  sigmas: object
  timesteps: object
  weights: str
  image: object = None        # I2V: [H0, W0, 3] float32 in [-1, 1]
  text_embeddings: dict = None
  init_noise: object = None   # [1, F, H, W, 16]
  loras: list = dataclasses.field(default_factory=list)   # [LoraSpec], merged into the DiT at load


def _exists(kind, path, hint):
  if not path:
    raise UsageError(f"{kind} is required; pass {hint}")
  if not os.path.exists(os.path.expanduser(path)):
    raise UsageError(f"{kind} {path!r} does not exist; pass {hint}")
  return os.path.expanduser(path)


def _parse_size(size):
  try:
    w, h = (int(v) for v in str(size).lower().replace("x", "*").split("*"))
  except ValueError:
    raise UsageError(f"size={size!r} must be W*H, e.g. 832*480") from None
  if w < 1 or h < 1:
    raise UsageError(f"size={size!r} must be positive, e.g. 832*480")
  return w, h


def _load_image(path):
  """`[H0, W0, 3]` float32 in [−1, 1], as the reference's `Image.open(path).convert("RGB")`: the first frame of
  an animation, grey (+ alpha) replicated to RGB, alpha dropped, integer samples scaled by their full range (a
  16-bit PNG is 0..65535, not 0..255)."""
  import imageio.v3 as iio
  import numpy as np
  try:
    img = np.asarray(iio.imread(path, index=0))
  except Exception as e:  # noqa: BLE001 - any decoder failure is the user's file
    raise UsageError(f"cannot read image {path!r} ({e})") from None
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4) or img.dtype.kind not in "buif":
    raise UsageError(f"image {path!r} decodes to an array of shape {img.shape} ({img.dtype}); expected a grey, "
                     f"grey+alpha, RGB or RGBA still image")
  img = img[..., :3] if img.shape[-1] >= 3 else np.repeat(img[..., :1], 3, axis=-1)
  scale = np.iinfo(img.dtype).max if img.dtype.kind in "ui" else 1.0   # float images: already in [0, 1]
  img = np.clip(img.astype(np.float32) / np.float32(scale), 0.0, 1.0)
  return (img - 0.5) / 0.5   # [0, 1] → [−1, 1] as the reference's TF.to_tensor().sub_(0.5).div_(0.5)


def _load_text_embeddings(path, text_len, text_dim, need_negative=True):
  """`context` (and `negative_context`, optional when CFG is off: then None) zero-padded to `[1, text_len, D]`."""
  import numpy as np
  try:
    data = np.load(path)
  except Exception as e:  # noqa: BLE001
    raise UsageError(f"text_embeddings {path!r} is not a readable .npz ({e})") from None
  out = {"negative_context": None}
  for key in ("context", "negative_context"):
    if key not in data and key == "negative_context" and not need_negative:
      continue
    if key not in data:
      raise UsageError(f"text_embeddings {path!r} lacks key {key!r}; expected keys context, negative_context "
                       f"(negative_context may be left out when cfg_scale=1)")
    a = np.asarray(data[key], np.float32)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2 or a.shape[1] != text_dim or a.shape[0] > text_len:
      raise UsageError(f"text_embeddings[{key!r}] has shape {data[key].shape}; expected [S, {text_dim}] or "
                       f"[1, S, {text_dim}] with S <= {text_len}")
    # The reference zero-pads the trimmed T5 states to text_len before text_embedding (§8.7).
    out[key] = np.pad(a, ((0, text_len - a.shape[0]), (0, 0)))[None]
  return out


def _load_init_noise(path, shape):
  """`[16, F, H, W]` / `[1, 16, F, H, W]` (torch layout) → `[1, F, H, W, 16]`."""
  import numpy as np
  try:
    a = np.load(path)
  except Exception as e:  # noqa: BLE001
    raise UsageError(f"init_noise {path!r} is not a readable .npy ({e})") from None
  a = a[None] if a.ndim == 4 else a
  want = (1, shape[4], shape[1], shape[2], shape[3])
  if a.shape != want:
    raise UsageError(f"init_noise {path!r} has shape {a.shape}; expected torch layout {want[1:]} or {want}")
  return np.ascontiguousarray(a.astype(np.float32).transpose(0, 2, 3, 4, 1))


def latent_shape(plan):
  cfg = plan.dit_cfg
  return (1, (plan.frames - 1) // 4 + 1, plan.height // 8, plan.width // 8, cfg.out_dim)


def check(c) -> Plan:
  """All edge checks; raises UsageError with one sentence. Reads only small files (image, npz, npy)."""
  from wanjax import schedules, solvers
  from wanjax.dit.config import get_config
  from wanjax.sharding import parse_mesh
  dit_cfg = get_config(c.model)
  if c.frames < 1 or (c.frames - 1) % 4:
    lo = max(1, c.frames - (c.frames - 1) % 4)
    raise UsageError(f"frames={c.frames} must be 4k+1 (e.g. {lo} or {lo + 4})")
  w, h = _parse_size(c.size)
  solver = solvers.get_solver(c.solver)
  if solver.schedule == "step_list" or c.timesteps:
    if not c.timesteps:
      raise UsageError(f"solver {c.solver!r} needs a step list; set --config.timesteps='(1000, 750, 500, 250)'")
    sigmas, timesteps = schedules.step_list_sigmas(c.timesteps, c.shift)
    if c.num_steps != len(c.timesteps):
      logging.warning("num_steps=%s is ignored: the step list timesteps=%s runs %d steps (set --config.timesteps "
                      "to change them)", c.num_steps, tuple(c.timesteps), len(c.timesteps))
  else:
    sigmas, timesteps = schedules.make_schedule(solver.schedule, num_steps=c.num_steps, shift=c.shift)
  sampling.check_solver_sigmas(solver, sigmas)
  if c.cfg_scale < 1:
    raise UsageError(f"cfg_scale={c.cfg_scale} must be >= 1 (1 disables CFG)")
  if c.get("guidance", 0.0) < 0:
    raise UsageError(f"guidance={c.guidance} must be >= 0 (0 = off; e.g. 5 for a CFG-distilled model)")
  if c.distilled and c.cfg_scale > 1:
    logging.warning("cfg_scale=%s on the step-distilled preset %r: distilled models are sampled without CFG "
                    "(cfg_scale=1); CFG > 1 tends to blur the video", c.cfg_scale, c.model)
  parse_mesh(c.mesh)
  vae_policy(c)
  check_prompt_grammar(c)
  image = None
  if dit_cfg.has_image_input:
    if dit_cfg.model_type != "i2v":
      raise UsageError(f"model={c.model!r} ({dit_cfg.model_type}) is not supported by this CLI; use t2v or i2v")
    image = _load_image(_exists("image", c.image, "--config.image=IMAGE.png for an I2V preset"))
    from wanjax.image.i2v import latent_size_for
    ls = latent_size_for(image.shape[0], image.shape[1], w * h)
    w, h = ls.width, ls.height
  elif c.image:
    raise UsageError(f"image={c.image!r} was given but model={c.model!r} is text-to-video; use an i2v preset")
  if w % T2V_SIZE_MULTIPLE or h % T2V_SIZE_MULTIPLE:
    m = T2V_SIZE_MULTIPLE
    near = lambda v: max(m, round(v / m) * m)  # noqa: E731
    raise UsageError(f"size {w}*{h}: width and height must be multiples of {m} (e.g. {near(w)}*{near(h)})")
  weights = ""
  if not c.random_init:
    weights = _exists("weights", c.weights, "--config.weights=DIT_DIR_OR_FILE")
    _check_model_type(weights, dit_cfg, c.model)
    if not c.text_embeddings:
      _exists("text_encoder", c.text_encoder, "--config.text_encoder=UMT5_DIR (or --config.text_embeddings)")
      _exists("tokenizer", c.tokenizer, "--config.tokenizer=TOKENIZER_DIR")
    _exists("vae", c.vae, "--config.vae=VAE_DIR_OR_FILE")
    if dit_cfg.has_image_input:
      _exists("clip", c.clip, "--config.clip=CLIP_DIR_OR_FILE")
  elif dit_cfg.has_image_input:
    demo.clip_preset_for(dit_cfg)   # a random tiny CLIP must fit the DiT's image_dim
  _check_guidance(c, dit_cfg, weights)
  from infer.models import check_dit_options
  loras = check_dit_options(c.lora, c.quant, weights, dit_cfg=dit_cfg, allow_unmatched=c.lora_allow_unmatched)
  plan = Plan(dit_cfg, dit_cfg.model_type, w, h, c.frames, sigmas, timesteps, weights, image=image, loras=loras)
  if c.text_embeddings:
    plan.text_embeddings = _load_text_embeddings(_exists("text_embeddings", c.text_embeddings, "an .npz"),
                                                 dit_cfg.text_len, dit_cfg.text_dim, use_cfg(c))
  if c.init_noise:
    plan.init_noise = _load_init_noise(_exists("init_noise", c.init_noise, "an .npy"), latent_shape(plan))
  for p in (c.save_latents,):
    if p and not p.endswith(".npy"):
      raise UsageError(f"save_latents={p!r} must end in .npy")
  return plan


PROMPT_GRAMMARS = ("", "toyworld")   # the choices of `config.prompt_grammar` ('' = any text)


def check_prompt_grammar(c):
  """Presets whose text encoder knows only a closed grammar (`prompt_grammar="toyworld"`: docs/toyworld.md)
  refuse other prompts: their unknown words would all be encoded as `<unk>` and sampled without a word said."""
  grammar = c.get("prompt_grammar", "")
  if grammar not in PROMPT_GRAMMARS:
    raise UsageError(f"prompt_grammar={grammar!r}; valid: {', '.join(map(repr, PROMPT_GRAMMARS))}")
  if grammar == "toyworld" and c.prompt:
    from wanjax.toyworld.world import parse_prompt
    try:
      parse_prompt(c.prompt)
    except UsageError as e:
      raise UsageError(f"{e} (this preset's text encoder knows only the toy-world grammar, docs/toyworld.md; "
                       f"--config.prompt_grammar='' samples the prompt anyway)") from None


VAE_DTYPES = ("float32", "bf16")   # the choices of `config.vae_dtype`


def vae_policy(c):
  """The VAE precision policy name from `config.vae_dtype` (float32 when a config predates the field)."""
  name = c.get("vae_dtype", "float32")
  if name not in VAE_DTYPES:
    raise UsageError(f"config.vae_dtype={name!r} is not valid; valid: {', '.join(VAE_DTYPES)}")
  return name


def use_cfg(c):
  """Two-pass CFG runs unless cfg_scale is 1 or a guidance-embedded model takes the guidance (`guidance > 0`)."""
  return c.cfg_scale != 1.0 and not c.get("guidance", 0.0)


def _check_guidance(c, preset_cfg, weights):
  """`guidance > 0` needs a DiT with a guidance embedding (post_training.md A.2): a converted CFG-distilled
  directory (`train.cfg_distill` exports one); raw torch checkpoints never hold it."""
  if not c.get("guidance", 0.0):
    return
  from infer.models import is_converted
  has = preset_cfg.guidance_embed
  if weights and is_converted(weights):
    from wanjax.dit.load import read_config
    has = read_config(weights)[0].guidance_embed
  elif weights:
    has = False
  if not has:
    where = f"weights {weights!r}" if weights else f"model={c.model!r} (random_init)"
    raise UsageError(f"guidance={c.guidance} needs a guidance-embedded (CFG-distilled) DiT but {where} has no "
                     f"guidance embedding; use cfg_scale for two-pass CFG, or the model exported by train.cfg_distill")
  if c.cfg_scale != 1.0:
    logging.info("guidance=%s: one forward per step with the guidance embedding; cfg_scale=%s is ignored",
                 c.guidance, c.cfg_scale)


def _check_model_type(weights, preset_cfg, preset):
  """A converted directory states its model type: an I2V checkpoint under a T2V preset fails here."""
  from infer.models import is_converted
  if not is_converted(weights):
    return   # raw torch checkpoint: checked by load_dit(expect_model_type=...) after conversion, before compiling
  from wanjax.dit.load import read_config
  cfg, _ = read_config(weights)
  model_type = preset_cfg.model_type
  if cfg.model_type != model_type:
    raise UsageError(f"weights {weights!r} hold a {cfg.model_type!r} DiT but model={preset!r} expects "
                     f"{model_type!r}; pick a {cfg.model_type} preset or {model_type} weights")
  check_dit_interface(cfg, preset_cfg, weights, preset)


# What the plan takes from the preset (latent and text shapes); width, depth and heads come from the weights.
INTERFACE_FIELDS = ("in_dim", "out_dim", "patch_size", "text_dim", "text_len")


def check_dit_interface(cfg, preset_cfg, weights, preset):
  """The weights' DiT must read and write the tensors the preset plans (any width, depth and head count)."""
  fields = INTERFACE_FIELDS + (("image_dim",) if preset_cfg.has_image_input else ())
  bad = [f for f in fields if getattr(cfg, f) != getattr(preset_cfg, f)]
  if bad:
    got = ", ".join(f"{f}={getattr(cfg, f)}" for f in bad)
    want = ", ".join(f"{f}={getattr(preset_cfg, f)}" for f in bad)
    raise UsageError(f"weights {weights!r} hold a DiT with {got} but model={preset!r} has {want}; pick the preset "
                     f"these weights were trained as (e.g. --config.model=tiny for the test models)")


# ============================================================================================ building blocks

def load_text_encoder_for(c, plan, mesh):
  """The umT5 encoder a preset needs, or None when contexts come from `text_embeddings` or are hashed (tiny)."""
  if plan.text_embeddings is not None or c.random_init:
    return None
  from infer.models import resolve_model
  from wanjax.text.encode import load_text_encoder
  return load_text_encoder(resolve_model(os.path.expanduser(c.text_encoder), family="umt5"),
                           os.path.expanduser(c.tokenizer), mesh=mesh, max_length=plan.dit_cfg.text_len)


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


def build_dit(c, plan, mesh):
  """The DiT (converted weights, or random for the demo) with `plan.loras` merged, then quantised (`c.quant`)."""
  from flax import nnx
  from infer.models import adapt_dit
  if c.random_init:
    from wanjax.dit.model import WanDiT
    dit = demo.random_model(lambda: WanDiT(plan.dit_cfg, policy=c.dtype, rngs=nnx.Rngs(0), attn_impl=c.attn_impl),
                            model_seed(c))
  else:
    from infer.models import resolve_dit
    from wanjax.dit.load import load_dit
    dit = load_dit(resolve_dit(plan.weights), policy=c.dtype, mesh=mesh, expect_model_type=plan.model_type,
                   attn_impl=c.attn_impl)
    check_dit_interface(dit.cfg, plan.dit_cfg, plan.weights, c.model)   # raw checkpoints: known once converted
  return adapt_dit(dit, plan.loras, allow_unmatched=c.lora_allow_unmatched, quant=c.quant)


def build_vae(c, mesh):
  """The VAE (converted weights, or random tiny for the demo) under the `config.vae_dtype` policy."""
  from flax import nnx
  policy = vae_policy(c)
  if c.random_init:
    from wanjax.vae.config import get_config
    from wanjax.vae.model import WanVAE
    return demo.random_model(lambda: WanVAE(get_config("tiny"), policy=policy, rngs=nnx.Rngs(0)), model_seed(c) + 1)
  from infer.models import resolve_model
  from wanjax.vae.load import load_vae
  return load_vae(resolve_model(os.path.expanduser(c.vae), family="vae"), policy=policy, mesh=mesh)


def build_clip(c, plan, mesh):
  from flax import nnx
  policy = "float32" if c.dtype == "float32" else "bf16"
  if c.random_init:
    from wanjax.image.clip import CLIPVisionTower
    cfg = demo.clip_preset_for(plan.dit_cfg)[1]
    return demo.random_model(lambda: CLIPVisionTower(cfg, policy=policy, rngs=nnx.Rngs(0)), model_seed(c) + 2)
  from infer.models import resolve_model
  from wanjax.image.load import load_clip
  return load_clip(resolve_model(os.path.expanduser(c.clip), family="clip"), policy=policy, mesh=mesh)


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

  def __init__(self, c, mesh, *, keep_encoders=True):
    self.c, self.mesh, self.keep_encoders = c, mesh, keep_encoders
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
      self.dit = build_dit(self.c, plan, self.mesh)
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
    with sharding.activate(self.mesh):
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go through --config.<field>=...")
  try:
    run(flags.FLAGS.config)
  except UsageError as e:
    print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  # Defined here, not at import, so tests and tools can import this module without claiming the flag name.
  from infer import cli
  cli.define_config_flag(
      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "sample", "toyworld.py"),
      "Sampling preset (configs/sample/<preset>.py[:arg]); default: the embedded toy-world 4-step student.")
  app.run(main, flags_parser=cli.parse_flags)
