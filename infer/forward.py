"""One forward pass of a model component on tensors from an `.npz` file: the fidelity-check entry point.

  python -m infer.forward --model ckpt/t2v_1_3b --inputs in.npz --out out.npz [--dtype bfloat16]
  python -m infer.forward --model self_forcing_dmd.pt --inputs in.npz --out out.npz --causal --frames-per-block 3

`--model` is a converted directory or a raw torch checkpoint (converted once into a cache, see
`infer/models.py`). Tensors use the reference (torch, channels-first) layout; the DiT component mirrors
`WanModel.forward` (`wan/modules/model.py`, spec `wan_model.md` §1.2):
  inputs:  x [B, 16, F, H, W] float32, t [B] or per-frame [B, F], context [B, L, text_dim] (L <= text_len;
           zero-padded to text_len as the reference does), i2v/flf2v also clip_fea [B, 257|514, 1280] and
           y [B, 20, F, H, W]
  outputs: v [B, 16, F, H, W] float32 (flow-matching velocity), written atomically.
`--causal --frames-per-block N` applies the block-causal self-attention mask (Self-Forcing / CausVid students).
`--lora 'a.safetensors:0.8,b.safetensors'` merges LoRAs into the DiT first (unmatched keys fail unless
`--lora-allow-unmatched`); `--quant int8|fp8` then runs it with weight-only quantised block matmuls.

The encoder components (`--component t5|vae_encode|vae_decode|clip`, same contract):
  t5          ids [B, L] int + mask [B, L] (1 = real token)  ->  out [B, L, D] float32
              (umT5 `T5Encoder` / transformers `UMT5EncoderModel` last hidden state, spec §3)
  vae_encode  video [B, 3, T, H, W] in [-1, 1], T = 4k+1, H and W divisible by 8  ->  latent [B, 16, F, h, w]
              (the normalised latent mean, spec §4.6: (mu - mean) / std)
  vae_decode  latent [B, 16, F, h, w] (normalised)  ->  video [B, 3, 1+4(F-1), 8h, 8w] clamped to [-1, 1]
  clip        image [B, 3, H, W] in [-1, 1] (any size; squash-resized to 224)  ->  out [B, 257, 1280] float32
              (penultimate ViT-H/14 tokens, `CLIPModel.visual`, spec §5; tiny models: [B, tokens, width])
  python -m infer.forward --component t5 --model models_t5_umt5-xxl-enc-bf16.pth --inputs ids.npz --out t5.npz
  python -m infer.forward --component clip --model image_encoder/ --inputs img.npz --out clip.npz
`--dtype bfloat16` runs the component's bf16 policy (umT5: bf16 weights and activations as the reference;
VAE/CLIP: bf16 matmuls). `--num-heads` gives the head count when converting a raw checkpoint that does not
record it (DiT: no config.json beside it and head dim != 128; CLIP: width not 768/1024/1280 nor a multiple of 64).

Components are runners in `COMPONENTS` (name -> function(model_path, inputs, **options) -> outputs).
"""

import os

import numpy as np

from wanjax.errors import UsageError
from wanjax.fileio import atomic_open

DTYPES = {"float32": "float32", "bfloat16": "bf16"}


def _need(inputs, key, rank, what):
  if key not in inputs:
    raise UsageError(f"inputs have no {key!r} ({what}); found {sorted(inputs)}")
  a = np.asarray(inputs[key])
  if a.ndim not in ((rank,) if isinstance(rank, int) else rank):
    raise UsageError(f"input {key!r} has shape {a.shape}; expected {what}")
  return a


def check_dit_inputs(cfg, inputs):
  """Validates the DiT inputs against the model config before anything is compiled; returns them as arrays."""
  image = cfg.has_image_input
  allowed = {"x", "t", "context"} | ({"clip_fea", "y"} if image else set())
  unknown = sorted(set(inputs) - allowed)
  if unknown:
    raise UsageError(f"unexpected inputs {unknown} for a {cfg.model_type} DiT; valid: {sorted(allowed)}")
  c_noisy = cfg.in_dim - (20 if image else 0)
  x = _need(inputs, "x", 5, f"x [B, {c_noisy}, F, H, W]")
  b, c, f, h, w = x.shape
  pt, ph, pw = cfg.patch_size
  if c != c_noisy:
    raise UsageError(f"input 'x' has shape {x.shape}: {c} channels, expected {c_noisy} ([B, C, F, H, W])")
  if h % ph or w % pw or f % pt:
    raise UsageError(f"input 'x' has latent H, W = {h}, {w} (F = {f}); H and W must be divisible by "
                     f"{ph} and {pw} (even), F by {pt}")
  t = _need(inputs, "t", (1, 2), f"t [{b}] or [{b}, {f}]")
  if t.shape not in ((b,), (b, f // pt)):
    raise UsageError(f"input 't' has shape {t.shape}; expected [{b}] or per-frame [{b}, {f // pt}]")
  ctx = _need(inputs, "context", 3, f"context [{b}, L, {cfg.text_dim}]")
  if ctx.shape[0] != b or ctx.shape[2] != cfg.text_dim or ctx.shape[1] > cfg.text_len:
    raise UsageError(f"input 'context' has shape {ctx.shape}; expected [{b}, L <= {cfg.text_len}, {cfg.text_dim}]")
  out = {"x": x.astype(np.float32), "t": t, "context": ctx.astype(np.float32)}
  if image:
    n = cfg.num_image_tokens
    clip = _need(inputs, "clip_fea", 3, f"clip_fea [{b}, {n}, {cfg.image_dim}]")
    if clip.shape != (b, n, cfg.image_dim):
      raise UsageError(f"input 'clip_fea' has shape {clip.shape}; expected [{b}, {n}, {cfg.image_dim}]")
    y = _need(inputs, "y", 5, f"y [{b}, 20, {f}, {h}, {w}]")
    if y.shape != (b, 20, f, h, w):
      raise UsageError(f"input 'y' has shape {y.shape}; expected [{b}, 20, {f}, {h}, {w}] (mask 4 + latent 16)")
    out.update(clip_fea=clip.astype(np.float32), y=y.astype(np.float32))
  return out


def run_dit(model, inputs, *, dtype="float32", causal=False, frames_per_block=None, cache_dir=None,
            num_heads=None, lora="", lora_allow_unmatched=False, quant="none"):
  """DiT velocity `v [B, 16, F, H, W]` for channels-first inputs (see the module docstring)."""
  import jax
  from infer.models import adapt_dit, check_dit_options, kernels_at_load, resolve_dit
  from wanjax.dit.load import load_dit, read_config
  from wanjax.dit.model import make_forward
  if dtype not in DTYPES:
    raise UsageError(f"dtype={dtype!r}; valid: {', '.join(DTYPES)}")
  if frames_per_block is not None and not causal:
    raise UsageError("--frames-per-block only applies with --causal")
  if causal:
    frames_per_block = 3 if frames_per_block is None else int(frames_per_block)
    if frames_per_block < 1:
      raise UsageError(f"frames_per_block={frames_per_block} must be >= 1 (Self-Forcing uses 3)")
  check_dit_options(lora, quant)
  path = resolve_dit(model, cache_dir=cache_dir, **_convert_kwargs(model, num_heads))
  loras = check_dit_options(lora, quant, path, allow_unmatched=lora_allow_unmatched)
  cfg, _ = read_config(path)
  arr = check_dit_inputs(cfg, inputs)
  ctx = arr["context"]
  if ctx.shape[1] < cfg.text_len:  # the reference zero-pads the T5 states to text_len and attends to all rows
    ctx = np.concatenate([ctx, np.zeros((ctx.shape[0], cfg.text_len - ctx.shape[1], ctx.shape[2]), ctx.dtype)], 1)
  to_last = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731  [B, C, F, H, W] -> [B, F, H, W, C]
  kwargs = {}
  if cfg.has_image_input:
    kwargs = {"clip_fea": arr["clip_fea"], "y": to_last(arr["y"])}
  loaded = load_dit(path, policy=DTYPES[dtype], cast_kernels=kernels_at_load(True, bool(loras), quant))
  model_ = adapt_dit(loaded, loras, allow_unmatched=lora_allow_unmatched, quant=quant)
  forward, params, rest = make_forward(model_)
  fn = jax.jit(forward, static_argnames=("frames_per_block",))
  v = fn(params, rest, to_last(arr["x"]), arr["t"], ctx, frames_per_block=frames_per_block, **kwargs)
  return {"v": np.ascontiguousarray(np.moveaxis(np.asarray(jax.device_get(v), np.float32), -1, 1))}


# ---------------------------------------------------------------------------------------------------------------
# Encoders: umT5, the VAE (both directions) and the CLIP image tower.

# What each encoder component reads: {input: description}, and the model family its --model must hold.
ENCODER_INPUTS = {
    "t5": {"ids": "ids [B, L] int token ids", "mask": "mask [B, L] (1 = real token, 0 = padding)"},
    "vae_encode": {"video": "video [B, 3, T, H, W] in [-1, 1]"},
    "vae_decode": {"latent": "latent [B, 16, F, h, w] (normalised)"},
    "clip": {"image": "image [B, 3, H, W] in [-1, 1]"},
}
FAMILIES = {"t5": "umt5", "vae_encode": "vae", "vae_decode": "vae", "clip": "clip"}


def _convert_kwargs(model, num_heads):
  """Converter options for a raw checkpoint; `--num-heads` on an already converted directory is an error (its
  config.json already fixes the head count)."""
  if num_heads is None:
    return {}
  from infer.models import is_converted
  if is_converted(model):
    raise UsageError(f"--num-heads only applies when converting a raw torch checkpoint; {model!r} is already "
                     f"converted (its config.json sets the head count)")
  if int(num_heads) < 1:
    raise UsageError(f"--num-heads={num_heads} must be >= 1")
  return {"num_heads": int(num_heads)}


def check_keys(component, inputs):
  """Missing or unexpected input names, before anything is converted or loaded."""
  needs = ENCODER_INPUTS[component]
  listing = "; ".join(needs.values())
  missing = [k for k in needs if k not in inputs]
  if missing:
    raise UsageError(f"inputs have no {missing[0]!r}; --component {component} needs {listing}; found "
                     f"{sorted(inputs)}")
  unknown = sorted(set(inputs) - set(needs))
  if unknown:
    raise UsageError(f"unexpected inputs {unknown} for --component {component}; it needs {listing}")


def _shape(inputs, key, rank, what):
  """The input as an array of the given rank, numeric."""
  a = np.asarray(inputs[key])
  if a.ndim != rank:
    raise UsageError(f"input {key!r} has shape {a.shape} (rank {a.ndim}); expected {what}")
  if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
    raise UsageError(f"input {key!r} has dtype {a.dtype}; expected numbers ({what})")
  return a


def _pixels(inputs, key, rank, what):
  """A float32 image/video input: finite; values outside [-1, 1] are warned about (the models accept them, but
  [0, 1] or [0, 255] data is the usual mistake)."""
  from absl import logging
  a = _shape(inputs, key, rank, what).astype(np.float32)
  if a.size and not np.isfinite(a).all():
    raise UsageError(f"input {key!r} has non-finite values (NaN or inf); expected {what}")
  if a.size and (a.min() < -1.001 or a.max() > 1.001):
    logging.warning("input %r has values in [%.3g, %.3g]; the model expects [-1, 1] (uint8 data: x / 127.5 - 1)",
                    key, float(a.min()), float(a.max()))
  return a


def check_t5_inputs(cfg, inputs):
  """`ids [B, L]` int in [0, vocab) and `mask [B, L]` of 0/1 -> (ids int32, mask int32)."""
  check_keys("t5", inputs)
  ids = _shape(inputs, "ids", 2, "ids [B, L] int token ids")
  if not np.issubdtype(ids.dtype, np.integer):
    raise UsageError(f"input 'ids' has dtype {ids.dtype}; expected integer token ids [B, L] (e.g. int32)")
  mask = _shape(inputs, "mask", 2, f"mask {list(ids.shape)} (1 = real token, 0 = padding)")
  if mask.shape != ids.shape:
    raise UsageError(f"input 'mask' has shape {mask.shape}; expected the shape of 'ids' {ids.shape}")
  if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab):
    raise UsageError(f"input 'ids' has token ids in [{ids.min()}, {ids.max()}]; valid: [0, {cfg.vocab}) for "
                     f"this encoder's vocabulary")
  bad = sorted(set(np.unique(mask).tolist()) - {0, 1})
  if bad:
    raise UsageError(f"input 'mask' holds values {bad[:5]}; expected only 0 (padding) and 1 (real token)")
  return ids.astype(np.int32), mask.astype(np.int32)


def check_video_input(cfg, inputs):
  """`video [B, 3, T, H, W]`: T = 4k+1, H and W divisible by 8 (the VAE's factors) -> float32."""
  check_keys("vae_encode", inputs)
  video = _pixels(inputs, "video", 5, "video [B, 3, T, H, W] in [-1, 1]")
  _, c, t, h, w = video.shape
  tf, sf = cfg.temporal_factor, cfg.spatial_factor
  if c != 3:
    raise UsageError(f"input 'video' has shape {video.shape}: {c} channels, expected 3 RGB ([B, 3, T, H, W])")
  if t < 1 or (t - 1) % tf:
    lo = 1 + tf * (max(t - 1, 0) // tf)
    raise UsageError(f"input 'video' has {t} frames; the frame count must be {tf}k+1 (e.g. {lo} or {lo + tf}; "
                     f"81 for Wan2.1)")
  if h < sf or w < sf or h % sf or w % sf:
    raise UsageError(f"input 'video' is {h}x{w} (H x W); both must be positive multiples of {sf} "
                     f"(e.g. {max(sf, h - h % sf)}x{max(sf, w - w % sf)}; 480x832 for Wan2.1)")
  return video


def check_latent_input(cfg, inputs):
  """`latent [B, z_dim, F, h, w]` (normalised) -> float32."""
  check_keys("vae_decode", inputs)
  what = f"latent [B, {cfg.z_dim}, F, h, w] (normalised)"
  latent = _shape(inputs, "latent", 5, what).astype(np.float32)
  if latent.shape[1] != cfg.z_dim:
    raise UsageError(f"input 'latent' has shape {latent.shape}: {latent.shape[1]} channels, expected "
                     f"{cfg.z_dim} ([B, C, F, h, w])")
  if min(latent.shape[2:]) < 1:
    raise UsageError(f"input 'latent' has shape {latent.shape}; F, h and w must be >= 1")
  if not np.isfinite(latent).all():
    raise UsageError(f"input 'latent' has non-finite values (NaN or inf); expected {what}")
  return latent


def check_image_input(inputs):
  """`image [B, 3, H, W]` in [-1, 1], any size (each image is resized to the CLIP size) -> float32."""
  check_keys("clip", inputs)
  image = _pixels(inputs, "image", 4, "image [B, 3, H, W] in [-1, 1]")
  if image.shape[1] != 3:
    raise UsageError(f"input 'image' has shape {image.shape}: {image.shape[1]} channels, expected 3 RGB "
                     f"([B, 3, H, W])")
  if min(image.shape[2:]) < 2:
    raise UsageError(f"input 'image' is {image.shape[2]}x{image.shape[3]} (H x W); need at least 2x2 pixels")
  return image


def _resolve(component, model, cache_dir, num_heads):
  """Converted directory of `model` for `component`, whose config.json must name the component's family."""
  import json
  from infer.models import resolve_model
  family = FAMILIES[component]
  path = resolve_model(model, family=family, cache_dir=cache_dir, **_convert_kwargs(model, num_heads))
  with open(os.path.join(path, "config.json")) as f:
    found = json.load(f).get("family")
  if found != family:
    raise UsageError(f"--model {model!r} holds a converted {found!r} model; --component {component} needs a "
                     f"{family!r} checkpoint")
  return path


def _policy(dtype):
  if dtype not in DTYPES:
    raise UsageError(f"dtype={dtype!r}; valid: {', '.join(DTYPES)}")
  return DTYPES[dtype]


def _host_f32(x):
  import jax
  import jax.numpy as jnp
  return np.asarray(jax.device_get(jnp.asarray(x).astype(jnp.float32)))


def _channels_first(x):  # [B, F, H, W, C] -> [B, C, F, H, W] (or [B, H, W, C] -> [B, C, H, W])
  return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def _channels_last(x):
  return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def run_t5(model, inputs, *, dtype="float32", cache_dir=None, num_heads=None):
  """umT5 encoder states `out [B, L, D]` float32 for `ids`, `mask` (the full padded length is encoded with the
  key mask, as the reference; rows past each prompt's length are returned as computed, not zeroed)."""
  from wanjax.text.load import load_umt5, read_config
  from wanjax.text.umt5 import forward_t5
  policy = _policy(dtype)
  check_keys("t5", inputs)
  path = _resolve("t5", model, cache_dir, num_heads)
  ids, mask = check_t5_inputs(read_config(path), inputs)
  return {"out": _host_f32(forward_t5(load_umt5(path, policy=policy), ids, mask))}


def run_vae_encode(model, inputs, *, dtype="float32", cache_dir=None, num_heads=None):
  """Normalised latent mean `latent [B, z, F, h, w]` float32 of `video [B, 3, T, H, W]`."""
  from wanjax.vae.load import load_vae, read_config
  from wanjax.vae.model import encode_video
  policy = _policy(dtype)
  check_keys("vae_encode", inputs)
  path = _resolve("vae_encode", model, cache_dir, num_heads)
  video = check_video_input(read_config(path), inputs)
  return {"latent": _channels_first(_host_f32(encode_video(load_vae(path, policy=policy), _channels_last(video))))}


def run_vae_decode(model, inputs, *, dtype="float32", cache_dir=None, num_heads=None):
  """Video `video [B, 3, 1+4(F-1), 8h, 8w]` float32 in [-1, 1] of a normalised `latent [B, z, F, h, w]`."""
  from wanjax.vae.load import load_vae, read_config
  from wanjax.vae.model import decode_latent
  policy = _policy(dtype)
  check_keys("vae_decode", inputs)
  path = _resolve("vae_decode", model, cache_dir, num_heads)
  latent = check_latent_input(read_config(path), inputs)
  return {"video": _channels_first(_host_f32(decode_latent(load_vae(path, policy=policy), _channels_last(latent))))}


def run_clip(model, inputs, *, dtype="float32", cache_dir=None, num_heads=None):
  """CLIP penultimate tokens `out [B, 1 + P, D]` float32 of `image [B, 3, H, W]` in [-1, 1]."""
  from wanjax.image.clip import clip_features
  from wanjax.image.load import load_clip
  policy = _policy(dtype)
  image = check_image_input(inputs)
  path = _resolve("clip", model, cache_dir, num_heads)
  return {"out": _host_f32(clip_features(load_clip(path, policy=policy), _channels_last(image)))}


COMPONENTS = {"dit": run_dit, "t5": run_t5, "vae_encode": run_vae_encode, "vae_decode": run_vae_decode,
              "clip": run_clip}


def load_inputs(path) -> dict:
  if not os.path.exists(path):
    raise UsageError(f"inputs file {path!r} does not exist")
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (ValueError, OSError) as e:
    raise UsageError(f"{path}: not a readable .npz file ({e})") from None


def save_outputs(path, outputs):
  """Writes an .npz atomically (temp file in the same folder + os.replace)."""
  with atomic_open(path, "wb") as f:
    np.savez(f, **outputs)


def check_out(path):
  """`--out` names a file that can be written (checked before any model is converted, loaded or run)."""
  from infer.sample import check_output_dir
  if os.path.isdir(path):
    raise UsageError(f"--out {path!r} is a folder; pass a file name such as {os.path.join(path, 'out.npz')!r}")
  check_output_dir("--out folder", os.path.dirname(os.path.abspath(path)))


def forward(component, model, inputs_path, out_path, **options):
  """Runs `component` on the tensors in `inputs_path` and writes its outputs to `out_path`."""
  if component not in COMPONENTS:
    raise UsageError(f"unknown component {component!r}; valid: {', '.join(COMPONENTS)}")
  outputs = COMPONENTS[component](model, load_inputs(inputs_path), **options)
  save_outputs(out_path, outputs)
  return outputs


def main(argv):
  from absl import flags
  f = flags.FLAGS
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")
  for name in ("model", "inputs", "out"):
    if not f[name].value:
      raise UsageError(f"--{name} is required")
  if f.component not in COMPONENTS:
    raise UsageError(f"unknown component {f.component!r}; valid: {', '.join(COMPONENTS)}")
  check_out(f.out)
  options = {"cache_dir": f["cache-dir"].value, "dtype": f.dtype, "num_heads": f["num-heads"].value}
  if f.component == "dit":
    options.update(causal=f.causal, frames_per_block=f["frames-per-block"].value, lora=f.lora or "",
                   lora_allow_unmatched=f["lora-allow-unmatched"].value, quant=f.quant)
  elif f.causal or f["frames-per-block"].value is not None:
    raise UsageError(f"--causal/--frames-per-block apply to --component dit, not {f.component!r}")
  elif f.lora or f["lora-allow-unmatched"].value or f.quant != "none":
    raise UsageError(f"--lora/--lora-allow-unmatched/--quant apply to --component dit, not {f.component!r}")
  outputs = forward(f.component, f.model, f.inputs, f.out, **options)
  shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
  print(f"{f.component} forward: wrote {shapes} to {f.out}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("component", "dit", "which model to run: " + ", ".join(COMPONENTS))
  flags.DEFINE_string("model", None, "converted model directory or raw torch checkpoint")
  flags.DEFINE_string("inputs", None, ".npz with the component's inputs (torch layout)")
  flags.DEFINE_string("out", None, "output .npz")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "precision policy of the component")
  flags.DEFINE_bool("causal", False, "block-causal self-attention (Self-Forcing / CausVid students)")
  flags.DEFINE_integer("frames-per-block", None, "latent frames per causal block (default 3 with --causal)")
  flags.DEFINE_string("lora", None, "DiT only: LoRA files merged at load, 'a.safetensors:0.8,b.safetensors'")
  flags.DEFINE_bool("lora-allow-unmatched", False, "DiT only: LoRA keys that match no parameter warn, not fail")
  flags.DEFINE_enum("quant", "none", ["none", "int8", "fp8"], "DiT only: weight-only quantised block matmuls "
                    "(after LoRA merges)")
  flags.DEFINE_string("cache-dir", None, "where raw torch checkpoints are converted (default ~/.cache/wanjax)")
  flags.DEFINE_integer("num-heads", None, "head count for converting a raw DiT/CLIP checkpoint that does not "
                       "record it (no config.json beside it, unusual width)")


OOM_ADVICE = "Try --dtype=bfloat16, --quant=int8 or fp8 (DiT), or smaller inputs (batch, frames, height x width)."


INTERRUPTED = ("--out is written whole or not at all, so no partial file is left (a raw checkpoint's conversion "
               "into the cache is renamed into place when complete, so it starts over next time)")


def cli_main(argv):
  """`main` as the CLI runs it: a usage error is one line (exit 2), an out-of-memory one line (exit 1), Ctrl-C one
  line (exit 130)."""
  from absl import logging
  from infer import cli
  from wanjax.errors import out_of_memory_message
  logging.set_verbosity(logging.INFO)
  try:
    cli.call_main(main, argv, INTERRUPTED)   # a usage error: one line, key lists included
  except Exception as e:   # noqa: BLE001  (an out-of-memory is one line; anything else keeps its traceback)
    msg = out_of_memory_message(e, OOM_ADVICE)
    if msg is None:
      raise
    cli.fail(msg, exit_code=1)


def run():
  from absl import app
  from infer import cli
  _define_flags()
  app.run(cli_main, flags_parser=cli.flags_parser())


if __name__ == "__main__":
  run()
