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

Components are runners in `COMPONENTS` (name -> function(model_path, inputs, **options) -> outputs); the
encoders (t5, vae_encode, vae_decode, clip) plug in there.
"""

import os
import sys
import tempfile

import numpy as np

from wanjax.errors import UsageError

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


def run_dit(model, inputs, *, dtype="float32", causal=False, frames_per_block=None, cache_dir=None):
  """DiT velocity `v [B, 16, F, H, W]` for channels-first inputs (see the module docstring)."""
  import jax
  from infer.models import resolve_dit
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
  path = resolve_dit(model, cache_dir=cache_dir)
  cfg, _ = read_config(path)
  arr = check_dit_inputs(cfg, inputs)
  ctx = arr["context"]
  if ctx.shape[1] < cfg.text_len:  # the reference zero-pads the T5 states to text_len and attends to all rows
    ctx = np.concatenate([ctx, np.zeros((ctx.shape[0], cfg.text_len - ctx.shape[1], ctx.shape[2]), ctx.dtype)], 1)
  to_last = lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))  # noqa: E731  [B, C, F, H, W] -> [B, F, H, W, C]
  kwargs = {}
  if cfg.has_image_input:
    kwargs = {"clip_fea": arr["clip_fea"], "y": to_last(arr["y"])}
  model_ = load_dit(path, policy=DTYPES[dtype])
  forward, params, rest = make_forward(model_)
  fn = jax.jit(forward, static_argnames=("frames_per_block",))
  v = fn(params, rest, to_last(arr["x"]), arr["t"], ctx, frames_per_block=frames_per_block, **kwargs)
  return {"v": np.ascontiguousarray(np.moveaxis(np.asarray(jax.device_get(v), np.float32), -1, 1))}


COMPONENTS = {"dit": run_dit}


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
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **outputs)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


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
  options = {"cache_dir": f["cache-dir"].value}
  if f.component == "dit":
    options.update(dtype=f.dtype, causal=f.causal, frames_per_block=f["frames-per-block"].value)
  elif f.causal or f["frames-per-block"].value is not None or f.dtype != "float32":
    raise UsageError(f"--dtype/--causal/--frames-per-block apply to --component dit, not {f.component!r}")
  outputs = forward(f.component, f.model, f.inputs, f.out, **options)
  shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
  print(f"{f.component} forward: wrote {shapes} to {f.out}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("component", "dit", "which model to run: " + ", ".join(COMPONENTS))
  flags.DEFINE_string("model", None, "converted model directory or raw torch checkpoint")
  flags.DEFINE_string("inputs", None, ".npz with the component's inputs (torch layout)")
  flags.DEFINE_string("out", None, "output .npz")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "DiT precision policy")
  flags.DEFINE_bool("causal", False, "block-causal self-attention (Self-Forcing / CausVid students)")
  flags.DEFINE_integer("frames-per-block", None, "latent frames per causal block (default 3 with --causal)")
  flags.DEFINE_string("cache-dir", None, "where raw torch checkpoints are converted (default ~/.cache/wanjax)")


def run():
  from absl import app, logging
  _define_flags()

  def wrapped(argv):
    logging.set_verbosity(logging.INFO)
    try:
      main(argv)
    except UsageError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  app.run(wrapped)


if __name__ == "__main__":
  run()
