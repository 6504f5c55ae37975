"""Shared pieces of the sampling configs (`configs/sample/*.py`): arg parsing and sampler defaults.

As big_vision's `configs/common.py`: a variant is an argument string (`lightx2v_4step.py:model=i2v_14b`) parsed
against typed defaults (`parse_arg`); unknown keys raise. `sample_defaults` holds everything a preset does not
state: seed, size, frames, mesh, output, encoders, video and the debugging hooks; presets set only what differs.
"""

import ml_collections

from wanjax.errors import UsageError

# Wan2.1's default negative prompt (spec `wan_model.md` §6.5); used whenever `negative_prompt` is empty.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
# Prefixes the reference prepends to the default negative prompt (I2V: camera shake; FLF2V: shot change).
NEGATIVE_PREFIX = {"t2v": "", "i2v": "镜头晃动，", "flf2v": "镜头切换，"}


def _convert(key, val, default):
  typ = type(default)
  if typ is bool:
    if val.lower() not in ("true", "false", "1", "0"):
      raise UsageError(f"config arg {key}={val!r} must be True or False")
    return val.lower() in ("true", "1")
  try:
    return typ(val)
  except ValueError:
    raise UsageError(f"config arg {key}={val!r} must be a {typ.__name__}") from None


def parse_arg(arg, **defaults):
  """Parses 'k=v,k2=v2' (a bare `k` means True) against typed `defaults` into a ConfigDict.

  Unknown keys and unparsable values raise UsageError naming the key and the valid ones.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    key, sep, val = part.partition("=")
    key = key.strip()
    if key not in defaults:
      raise UsageError(f"unknown config arg {key!r}; valid: {', '.join(sorted(defaults))}")
    out[key] = _convert(key, val.strip() if sep else "True", defaults[key])
  return out


def negative_prompt(model_type, negative=""):
  """The negative prompt the reference uses: `negative` if given, else the default with the type's prefix."""
  return negative or NEGATIVE_PREFIX.get(model_type, "") + WAN_NEGATIVE_PROMPT


def sample_defaults(arg=None):
  """Defaults shared by every sampling preset; presets override what differs."""
  del arg
  c = ml_collections.ConfigDict()
  # Model and weights.
  c.model = "t2v_14b"          # DiT preset (wanjax.dit.config.PRESETS): architecture and expected model type
  c.weights = ""               # converted DiT dir or raw torch checkpoint (converted on first use); required
  c.random_init = False        # tiny demo only: random DiT/VAE weights from the seed, hashed text contexts
  c.distilled = False          # step-distilled weights: CFG > 1 blurs (warned)
  c.text_encoder = ""          # converted umT5 dir (raw torch files are converted on first use)
  c.tokenizer = ""             # folder with tokenizer.json (the `google/umt5-xxl` tokenizer)
  c.vae = ""                   # converted VAE dir (or raw Wan2.1_VAE.pth)
  c.clip = ""                  # I2V only: converted CLIP image encoder dir
  c.dtype = "bf16"             # DiT precision policy: bf16 | float32 | bf16_weights
  c.vae_dtype = "float32"      # float32 (reference, fp32) | bf16: 81x480x832 decode 9.16 s -> 1.40 s on H200
  c.attn_impl = "auto"          # auto | xla | cudnn | splash | pallas_gpu (opt-in: Hopper, bidirectional only)
  c.scan_unroll = 1            # DiT layers per iteration of its scanned layer loop (same maths; more = longer
                               # compile; the layer count = no loop). benchmarks/dit_forward.py --scan-unroll
  c.lora = ""                  # 'a.safetensors:0.8,b.safetensors' merged into the DiT at load (strength default 1)
  c.lora_allow_unmatched = False   # LoRA keys that match no DiT parameter: warn instead of failing
  c.quant = "none"             # none | int8 | fp8: weight-only block matmuls (after LoRA merges); quantised
                               # converted dirs (converter --keep-quantized) load as stored (none or their mode)
  # What to sample.
  c.prompt = ""
  c.negative_prompt = ""       # '' = Wan's default (with the I2V prefix for i2v models)
  c.image = ""                 # I2V only: input image (png/jpg)
  c.seed = 42                  # -1 = random (the drawn seed is written to the sidecar)
  c.size = "832*480"           # W*H; for I2V the pixel area (aspect from the image), as the reference
  c.frames = 81                # 4k+1
  # Sampler (presets override).
  c.solver = "unipc"           # unipc | dpmpp | euler | consistency
  c.num_steps = 50
  c.shift = 5.0
  c.timesteps = ()             # step list (distilled presets), e.g. (1000, 750, 500, 250); overrides num_steps
  c.cfg_scale = 5.0
  c.guidance = 0.0             # > 0: guidance-embedded (CFG-distilled) DiT, one forward per step with w·1000;
                               # CFG is then off (cfg_scale ignored)
  # Parallelism.
  c.mesh = ""                  # e.g. "data=2" (the CFG pair on two devices) or "fsdp=-1"
  c.sharding_overrides = ""    # rows before wanjax.sharding.RULES, e.g. "embed=fsdp+context" (docs/scaling.md)
  # Output.
  c.output_dir = "outputs"
  c.output_name = ""           # '' = <preset>_<seed>_<time>; files: NAME.mp4, NAME.json (+ NAME_frames/)
  c.fps = 16
  c.save_frames = False        # also write PNG frames
  c.compilation_cache = "~/.cache/wanjax/jax_cache"   # '' disables JAX's persistent compilation cache
  # Debugging / parity hooks.
  c.init_noise = ""            # .npy initial latent, torch layout [16, F, H, W] or [1, 16, F, H, W]
  c.text_embeddings = ""       # .npz with `context` and `negative_context` ([S, D] or [1, S, D]); skips umT5
  c.save_latents = ""          # .npy: final latent before decode, torch layout [1, 16, F, H, W]
  return c
