"""Resolves model paths for the inference CLIs: a converted wanjax directory is used as is; a raw torch
checkpoint (torch-layout `.safetensors`, `.pt/.pth`, shard folder or index) is converted once into a cache
folder and reused afterwards.

Cache key: hash of the absolute path, size and mtime of the checkpoint file(s), so editing or replacing the
file converts again. Default cache: `~/.cache/wanjax/converted/<hash>` (override with `cache_dir` or
`$WANJAX_CACHE`).

Also the DiT options both CLIs share (`infer.sample` and `infer.forward --component dit`): LoRA merges, then
weight-only quantisation (`check_dit_options` at the edge, `adapt_dit` after loading).
"""

import glob
import hashlib
import json
import os
import shutil
import tempfile

from absl import logging

from wanjax.errors import UsageError
from wanjax.fileio import publish


def use_compilation_cache(path, *, min_compile_s=None):
  """Points JAX's persistent compilation cache at `path` (`config.compilation_cache`; '' leaves it off), so a
  later process with the same shapes reads its programs back instead of compiling. `min_compile_s`: cache only
  programs that took at least this long to compile (None keeps JAX's default, 1 s). Returns the expanded path."""
  if not path:
    return ""
  import jax
  path = os.path.expanduser(path)
  jax.config.update("jax_compilation_cache_dir", path)
  if min_compile_s is not None:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
  return path


def default_cache_dir() -> str:
  root = os.environ.get("WANJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wanjax")
  return os.path.join(root, "converted")


def is_converted(path) -> bool:
  """True for a wanjax model directory (config.json written by the converter, with a "family")."""
  cfg = os.path.join(path, "config.json")
  if not (os.path.isdir(path) and os.path.exists(cfg)):
    return False
  try:
    with open(cfg) as f:
      return "family" in json.load(f) and bool(glob.glob(os.path.join(path, "*.safetensors")))
  except (OSError, json.JSONDecodeError):
    return False


def _fingerprint(path) -> str:
  path = os.path.abspath(path)
  files = ([path] if os.path.isfile(path) else
           sorted(glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.json"))))
  if path.endswith(".index.json"):
    files += sorted(glob.glob(os.path.join(os.path.dirname(path), "*.safetensors")))
  h = hashlib.sha256()
  for f in files:
    st = os.stat(f)
    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:20]


def resolve_model(path, *, family=None, cache_dir=None, **convert_kwargs) -> str:
  """A converted directory for `path`, converting a raw torch checkpoint on first use (atomically: a
  temporary folder renamed into place, so an interrupted conversion is never reused)."""
  if not os.path.exists(path):
    raise UsageError(f"model path {path!r} does not exist")
  from wanjax.model_dir import JOURNAL
  if os.path.isfile(os.path.join(path, JOURNAL)):
    raise UsageError(f"model folder {path!r} holds {JOURNAL}: a conversion or export into it was interrupted "
                     f"while it replaced the files; run the same `python -m converters.convert` or `python -m "
                     f"train.export` command (--out {path}) again to finish it")
  if is_converted(path):
    return path
  cache = os.path.join(cache_dir or default_cache_dir(), _fingerprint(path))
  if is_converted(cache):
    logging.info("using the cached conversion of %s: %s", path, cache)
    return cache
  from converters.convert import convert_checkpoint, summary_line  # imports torch lazily, only for .pt
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(cache), prefix=".tmp-")
  try:
    s = convert_checkpoint(path, tmp, family=family, progress=False, **convert_kwargs)
    logging.info("%s", summary_line(s))
    try:
      publish(tmp, cache)   # POSIX rename: fails on an existing non-empty folder
    except OSError:   # another process finished the same conversion first
      if not is_converted(cache):
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  logging.info("converted %s into the cache %s", path, cache)
  return cache


def resolve_dit(path, cache_dir=None, **convert_kwargs) -> str:
  """Converted DiT directory for `path` (a converted directory or a raw torch checkpoint)."""
  return resolve_model(path, family="dit", cache_dir=cache_dir, **convert_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# DiT options: LoRA merges and weight-only quantisation.

QUANT_MODES = ("none", "int8", "fp8")


def stored_quant(path):
  """Quantisation mode a converted DiT directory is stored in ('int8' | 'fp8'), or None."""
  if not is_converted(path):
    return None
  from wanjax import quant as quantlib
  from wanjax.dit.load import read_config
  q = read_config(path)[1].get("quantization")
  return quantlib.check_mode(q["format"]) if q else None


def check_dit_options(lora="", quant="none", weights="", *, dit_cfg=None, allow_unmatched=False):
  """Edge checks of a LoRA spec string and a quantisation mode against the weights (a converted directory is
  inspected; anything else is checked after loading). Returns the LoRA specs with expanded paths.

  With `dit_cfg` (or a converted `weights` directory) the LoRA keys are also matched against the DiT's
  parameter shapes (abstract, nothing allocated), so unmatched keys fail before any model is loaded.
  """
  import dataclasses
  from wanjax.lora import parse_lora_specs
  if quant not in QUANT_MODES:
    raise UsageError(f"quant={quant!r}; valid: {', '.join(QUANT_MODES)}")
  specs = [dataclasses.replace(s, path=os.path.expanduser(s.path)) for s in parse_lora_specs(lora)]
  for s in specs:
    if not os.path.isfile(s.path):
      raise UsageError(f"LoRA file {s.path!r} does not exist; pass 'path.safetensors[:strength],...'")
    if not s.path.endswith(".safetensors"):
      raise UsageError(f"LoRA file {s.path!r} is not a .safetensors file; convert .pt LoRAs to safetensors first")
  stored = stored_quant(weights) if weights else None
  _check_stored(stored, specs, quant, weights)
  if weights and is_converted(weights):
    from wanjax.dit.load import read_config
    dit_cfg = read_config(weights)[0]
  if specs and dit_cfg is not None and not allow_unmatched:   # allowed: merge_loras warns once, at the merge
    from flax import nnx
    from wanjax.dit.model import WanDiT
    from wanjax.lora import merge_loras
    abstract = nnx.state(nnx.eval_shape(lambda: WanDiT(dit_cfg, rngs=nnx.Rngs(0))), nnx.Param)
    merge_loras(abstract, specs, dry_run=True)
  return specs


def _check_stored(stored, specs, quant, where):
  if stored is None:
    return
  if specs:
    raise UsageError(f"{where} holds {stored}-quantised kernels, which a LoRA cannot be merged into; convert the "
                     f"checkpoint without --keep-quantized to merge LoRAs")
  if quant not in ("none", stored):
    raise UsageError(f"quant={quant!r} but {where} is stored {stored}-quantised; use quant={stored!r} or 'none', "
                     f"or convert without --keep-quantized")


def weight_bytes(model) -> int:
  """Bytes held by the model's parameters (quantised kernels count 1 byte per value, plus their scales)."""
  import jax
  from flax import nnx
  return int(sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def kernels_at_load(cast_kernels, loras, quant):
  """`load_dit(cast_kernels=...)` for a DiT that gets `loras` merged (bool) and `quant` applied after loading, and
  whose kernels `adapt_dit(cast_kernels=...)` casts at the end or not: True (every bf16-read kernel) when nothing
  follows and the cast is wanted; "exact" (only kernels the files store in bf16) when a merge or a quantiser
  follows, which read them in float32 either way; False with both (the quantiser must see the unrounded merge)."""
  if loras and quant != "none":
    return False
  return True if cast_kernels and not loras and quant == "none" else "exact"


def adapt_dit(dit, loras=(), *, allow_unmatched=False, quant="none", cast_kernels=True):
  """Merges `loras` (LoraSpec list) into `dit` in place, then quantises it (`quant` int8 | fp8); returns `dit`.

  LoRAs go first: they are merged in float32 into the float kernels, which are then quantised together. A DiT
  loaded already quantised (converter `--keep-quantized`) is kept as stored. Last, `cast_kernels` stores the
  half-precision matmuls' float32 kernels in bf16 (`wanjax.nn.cast_kernels`: bit-identical outputs, half their
  memory, no per-call cast); pass False to keep float32 kernels for merging LoRAs later (the server's
  per-request strengths; kernels already loaded in bf16 stay so, `load_dit(cast_kernels="exact")`).
  """
  import jax
  from flax import nnx
  from wanjax import lora as loralib
  from wanjax import quant as quantlib
  stored = quantlib.file_mode(x.dtype for x in jax.tree.leaves(nnx.state(dit, nnx.Param)))
  _check_stored(stored, loras, quant, "the loaded DiT")
  if loras:
    loralib.merge_loras(dit, list(loras), allow_unmatched=allow_unmatched, donate=True)
    logging.info("merged %d LoRA file(s): %s", len(loras), ", ".join(f"{s.path}:{s.strength:g}" for s in loras))
  if quant != "none" and stored is None:
    quantlib.quantize_model(dit, quant)
  if cast_kernels:
    from wanjax.nn import cast_kernels as cast
    saved = cast(dit)
    if saved:
      logging.info("stored the bf16 matmuls' kernels in bf16 (%.3f GiB less; outputs unchanged)", saved / 2**30)
  mode = stored or (quant if quant != "none" else "unquantised")
  logging.info("DiT weight memory: %.3f GiB (%s)", weight_bytes(dit) / 2**30, mode)
  return dit
