"""Converts a torch checkpoint (DiT, and every family registered in `converters/families.py`) to a wanjax
model directory: `config.json` (architecture + "family" + "source_layout") and JAX-layout
`model.safetensors`, streamed tensor by tensor (peak memory about one tensor).

  python -m converters.convert --src Wan2.1-T2V-1.3B/ --out ckpt/t2v_1_3b [--dtype bfloat16]
  python -m converters.convert --src self_forcing_dmd.pt --out ckpt/sf --subkey generator_ema
  python -m converters.convert --src wan2.1_t2v_14b_int8.safetensors --out ckpt/int8 --keep-quantized
  python -m converters.convert --src style_lora.pt --out loras/      # -> loras/style_lora.safetensors

Layouts are detected (original Wan, diffusers, ComfyUI, LightX2V int8/fp8, Self-Forcing/CausVid `.pt`; keys
behind a training wrapper's prefix such as `module.` are read without it); the layout found is logged and
printed in the final summary line. A `.pt/.pth` LoRA is rewritten as safetensors with its keys unchanged (LoRAs
are merged at sampling time, `--config.lora`; safetensors LoRAs need no conversion). An existing conversion in
`--out` is replaced crash-safely (`wanjax/model_dir.py`).
"""

import inspect
import json
import os
import tempfile

import ml_dtypes
import numpy as np
from absl import logging

from converters import engine, families
from converters.reader import PrefixedSource, TensorSource, TorchSource, open_source
from wanjax import model_dir
from wanjax.errors import CheckpointError, UsageError

TORCH_EXTS = (".pt", ".pth", ".bin", ".ckpt")   # torch pickles (read with weights_only=True)
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
# Self-Forcing / CausVid training checkpoints nest the weights; EMA first, as SF's inference (--use_ema).
NESTED_PREFERENCE = ("generator_ema", "generator", "model", "state_dict")


class CastSource(TensorSource):
  """Casts floating tensors to `dtype` on read, except the keys in `keep` (quantised weights, scales)."""

  def __init__(self, base, dtype, keep=()):
    self.base, self.target, self.keep = base, dtype, set(keep)

  def keys(self):
    return self.base.keys()

  def shape(self, key):
    return self.base.shape(key)

  def _casts(self, key):
    if self.target is None or key in self.keep:
      return False
    dt = engine._np_dtype(self.base.dtype(key))
    return np.issubdtype(dt, np.floating) or dt.kind == "V"

  def dtype(self, key):
    return np.dtype(self.target).name if self._casts(key) else self.base.dtype(key)

  def get(self, key):
    w = self.base.get(key)
    return w.astype(self.target) if self._casts(key) else w


def open_checkpoint(src, subkey=None):
  """(source, subkey used): a torch pickle holding nested state dicts (Self-Forcing, CausVid) opens the
  `subkey` entry, by default the first of NESTED_PREFERENCE present."""
  is_torch = str(src).endswith(TORCH_EXTS)
  if subkey and not is_torch:
    raise UsageError(f"--subkey={subkey!r} only applies to .pt/.pth files; {src!r} is not one")
  source = open_source(src, subkey=subkey)
  if subkey is None and isinstance(source, TorchSource) and not source.keys() and source.nested:
    pick = next((k for k in NESTED_PREFERENCE if k in source.nested), None)
    if pick is None:
      raise UsageError(f"{src}: the weights are nested under {source.nested}; choose one with --subkey")
    logging.info("%s: nested state dicts %s; using %r (choose with --subkey)", src, source.nested, pick)
    source, subkey = open_source(src, subkey=pick), pick
  return source, subkey


def convert_checkpoint(src, out_dir, *, dtype=None, keep_quantized=False, subkey=None, family=None,
                       num_heads=None, progress=True) -> dict:
  """Converts `src` into `out_dir`; returns a summary dict (family, layout, config, tensors, out_dir, ...).

  dtype: None (keep each tensor's dtype), "float32" or "bfloat16" for floating tensors.
  keep_quantized: write LightX2V int8/fp8 kernels as stored plus `kernel_scale` (see converters/names/dit.py).
  num_heads: overrides the head count the DiT / CLIP converter infers (DiT: no config.json and head dim != 128).
  """
  if dtype is not None and dtype not in DTYPES:
    raise UsageError(f"dtype={dtype!r}; valid: {', '.join(DTYPES)}")
  if num_heads is not None and (isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1):
    raise UsageError(f"--num-heads={num_heads!r} must be a whole number >= 1 (a divisor of the model dim)")
  done = _converted_family(src)
  if done:
    raise UsageError(f"--src {src!r} is already a converted wanjax {done} folder (config.json with a 'family'); "
                     f"pass it to infer.sample / load it directly, there is nothing to convert")
  # A torch pickle is opened once, here: whether it is a LoRA (rewritten as one safetensors file) decides what
  # --out means. Other sources are opened after the output folder is checked.
  is_torch = os.path.isfile(str(src)) and str(src).endswith(TORCH_EXTS)
  source, subkey = open_checkpoint(src, subkey) if is_torch else (None, subkey)
  try:
    if source is not None and families.lora_keys(source.keys()):
      return convert_lora(src, source, out_dir, dtype=dtype, subkey=subkey)
    model_dir.check_no_other_weights(out_dir)
    created = _make_out_dir(out_dir)
    model_dir.recover(out_dir)   # an earlier run that crashed while replacing the files: finish it first (logged)
    try:
      if source is None:
        source, subkey = open_checkpoint(src, subkey)
      summary = _convert(src, source, subkey, out_dir, dtype, keep_quantized, family, num_heads, progress)
    except BaseException:
      if created and os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)   # a failed conversion leaves no empty folder it made behind
      raise
  finally:
    if source is not None:
      source.close()
  logging.info("wrote %d tensors to %s", summary["tensors"], out_dir)
  return summary


def lora_out_path(src, out) -> str:
  """`--out` for a LoRA: a `.safetensors` file path as given, else `<out>/<src stem>.safetensors`."""
  if str(out).endswith(".safetensors"):
    return str(out)
  return os.path.join(str(out), os.path.splitext(os.path.basename(str(src)))[0] + ".safetensors")


def convert_lora(src, source, out, *, dtype=None, subkey=None) -> dict:
  """Rewrites a `.pt/.pth` LoRA (`source`, opened from `src`; closed by the caller) as safetensors with its keys
  unchanged (every spelling `wanjax.lora` reads is kept as is; the sampler maps them when merging), so that
  `--config.lora` can memory-map it without torch. Floating tensors are cast to `dtype` when given. Returns the
  summary dict."""
  from wanjax.checkpoint import StreamingWriter
  path = lora_out_path(src, out)
  if os.path.isdir(path):
    raise UsageError(f"--out {path!r} is a folder; pass a .safetensors file path or the folder to write into")
  folder = os.path.dirname(os.path.abspath(path))
  created = _make_out_dir(folder)
  try:
    cast = CastSource(source, DTYPES.get(dtype))
    keys = sorted(cast.keys())
    entries = [(k, engine._np_dtype(cast.dtype(k)), tuple(cast.shape(k))) for k in keys]
    writer = StreamingWriter(path, entries, metadata={"format": "lora", "source": os.path.basename(str(src))})
    try:
      for k in keys:
        writer.write(k, np.asarray(cast.get(k)))
      writer.close()
    except BaseException:
      writer.abort()
      raise
  except BaseException:
    if created and os.path.isdir(folder) and not os.listdir(folder):
      os.rmdir(folder)
    raise
  logging.info("wrote LoRA %s (%d tensors)", path, len(keys))
  return {"family": "lora", "layout": "as stored", "subkey": subkey, "tensors": len(keys),
          "dtype": dtype or "as stored", "out_dir": os.path.abspath(path), "config": {},
          "description": f"use it with infer.sample --config.lora={path}[:strength]"}


def _converted_family(src):
  """The "family" of a folder this converter wrote (its config.json), else None."""
  cfg = os.path.join(str(src), "config.json")
  if not (os.path.isdir(str(src)) and os.path.isfile(cfg)
          and os.path.isfile(os.path.join(str(src), "model.safetensors"))):
    return None
  try:
    with open(cfg) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta.get("family") if isinstance(meta, dict) else None


def _make_out_dir(out_dir) -> bool:
  """Creates `out_dir` (True if it did not exist) and checks that a file can be written in it, before any
  tensor is read, so that a bad --out fails at once with one line instead of an OSError traceback."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise UsageError(f"--out {out_dir!r} is an existing file; pass a folder (it is created if missing)")
  created = not os.path.exists(out_dir)
  try:
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_dir):
      pass
  except OSError as e:
    raise UsageError(f"cannot write to the output folder {out_dir!r} ({e.strerror}); pass a writable --out") \
        from None
  return created


def _convert(src, source, subkey, out_dir, dtype, keep_quantized, family, num_heads, progress) -> dict:
  """The conversion of the open `source` (read from `src`) into the existing folder `out_dir`; returns the
  summary dict."""
  found, mod, layout = _detect(source, family, src)
  logging.info("%s: found a %s checkpoint in layout %r", src, mod.FAMILY, layout)
  view = families.prepare(mod, found, layout, keep_quantized=keep_quantized)
  kwargs = {}
  if num_heads is not None:
    if "num_heads" not in inspect.signature(mod.config_from_keys).parameters:
      raise UsageError(f"--num-heads does not apply to {mod.FAMILY} checkpoints")
    kwargs["num_heads"] = num_heads
  config = dict(mod.config_from_keys(view, layout, **kwargs))
  steps = mod.plan(layout, config)
  config.update(family=mod.FAMILY, source_layout=layout)
  expected = mod.file_shapes(config) if hasattr(mod, "file_shapes") else None
  keep = ()
  if keep_quantized and hasattr(view, "quantized_weights"):
    quantized = set(view.quantized_weights())
    keep = {s.source for s in steps if s.source in quantized or s.source.endswith(".weight_scale")}
  cast = CastSource(view, DTYPES.get(dtype), keep)
  from tqdm import tqdm
  with tqdm(total=len(steps), desc=f"convert {mod.FAMILY}", unit="tensor", disable=not progress) as bar:
    engine.write_model(cast, steps, out_dir, config=config, ignore=tuple(mod.IGNORE.get(layout, ())),
                       expected=expected, progress=bar)
  return {"family": mod.FAMILY, "layout": layout, "subkey": subkey, "tensors": len(steps),
          "dtype": dtype or "as stored", "out_dir": os.path.abspath(out_dir), "config": config,
          "description": mod.describe(config) if hasattr(mod, "describe") else ""}


# Wrapper prefixes stripped when no layout matches otherwise, at most this deep (`module._orig_mod.`).
MAX_WRAPPERS = 3


def _common_prefix(keys) -> str:
  """'module.' when every key starts with that same first component (a training wrapper's), else ''."""
  heads = {k.split(".", 1)[0] + "." for k in keys if "." in k}
  return heads.pop() if len(heads) == 1 and all("." in k for k in keys) else ""


def _detect(source, family, src):
  """(source as read, family module, layout). Keys that all carry a prefix no layout knows (DDP's `module.`,
  torch.compile's `_orig_mod.`) are read without it, with a warning; errors name `src`."""
  try:
    return (source, *families.detect(source, family))
  except CheckpointError as e:
    first = e
  view, stripped = source, ""
  for _ in range(MAX_WRAPPERS):
    prefix = _common_prefix(view.keys())
    if not prefix:
      break
    view, stripped = PrefixedSource(view, prefix), stripped + prefix
    try:
      mod, layout = families.detect(view, family)
    except CheckpointError:
      continue
    logging.warning("%s: every key starts with %r, which no known layout uses; reading the keys without it",
                    src, stripped)
    return view, mod, layout
  raise CheckpointError(f"{src}: {first}") from None


def summary_line(s) -> str:
  sub = f", subkey {s['subkey']!r}" if s["subkey"] else ""
  desc = f": {s['description']}" if s["description"] else ""
  return (f"converted {s['family']} checkpoint (layout {s['layout']!r}{sub}{desc}) -> {s['out_dir']} "
          f"[{s['tensors']} tensors, dtype {s['dtype']}]")


def main(argv):
  from absl import flags
  f = flags.FLAGS
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")
  if not f.src or not f.out:
    raise UsageError("--src and --out are required")
  s = convert_checkpoint(f.src, f.out, dtype=f.dtype, keep_quantized=f["keep-quantized"].value,
                         subkey=f.subkey, family=f.family, num_heads=f["num-heads"].value)
  print(summary_line(s))


def _define_flags():
  from absl import flags
  flags.DEFINE_string("src", None, "torch checkpoint: .safetensors, shard folder/index, or .pt/.pth")
  flags.DEFINE_string("out", None, "output folder (config.json + model.safetensors)")
  flags.DEFINE_enum("dtype", None, list(DTYPES), "cast floating tensors (default: keep the stored dtype)")
  flags.DEFINE_bool("keep-quantized", False, "keep LightX2V int8/fp8 kernels quantised (+ kernel_scale)")
  flags.DEFINE_string("subkey", None, "nested state dict of a .pt file, e.g. generator or generator_ema")
  flags.DEFINE_string("family", None, "restrict detection to one family (dit, umt5, vae, clip)")
  flags.DEFINE_integer("num-heads", None, "DiT / CLIP head count when it cannot be inferred (tiny test models)")


INTERRUPTED = ("the new files are staged and renamed into place, so --out holds its earlier model (or none), never a "
               "partial one; run the same command again to convert")


def cli_main(argv):
  """`main` as the CLI runs it: a usage error is one line (exit 2), Ctrl-C one line (exit 130)."""
  from absl import logging as absl_logging
  from infer import cli   # the CLIs' shared flag parsing and exit codes
  absl_logging.set_verbosity(absl_logging.INFO)
  cli.call_main(main, argv, INTERRUPTED)


def run():
  from absl import app
  from infer import cli
  _define_flags()
  app.run(cli_main, flags_parser=cli.flags_parser())


if __name__ == "__main__":
  run()
