"""The edge of `infer.sample`: a sampling config -> a checked `Plan`, or one `UsageError` naming the field at
fault, before anything is compiled or written (frames 4k+1, sizes, solvers and step lists, paths, the DiT
preset against the weights, I2V images, injected noise/embeddings, guidance, the toy-world prompt grammar).

`infer.sample` re-exports these names (`sample.check`, `sample.Plan`, ...).
"""

import dataclasses
import os

from absl import logging

from infer import demo
from wanjax import sampling, video
from wanjax.errors import UsageError

T2V_SIZE_MULTIPLE = 16   # VAE stride 8 × patch 2


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
    raise UsageError(f"frames={c.frames} must be 4k+1 ({video.frame_count_hint(c.frames)})")
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
  if c.get("scan_unroll", 1) < 1:
    raise UsageError(f"scan_unroll={c.scan_unroll} must be >= 1 (DiT layers per iteration of its layer loop)")
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
  if c.random_init:   # the demo presets build random models: a model file given to them would go unread
    given = [f"{f}={c[f]!r}" for f in ("weights", "text_encoder", "tokenizer", "vae", "clip") if c.get(f, "")]
    if given:
      raise UsageError(f"{', '.join(given)} would not be read: this preset samples random models (random_init=True); "
                       f"add --config.random_init=False to load them")
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
