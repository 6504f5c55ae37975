"""The model-family registry of the converter: which name table a torch checkpoint belongs to.

A family is a module `converters/names/<family>.py` exposing:
  FAMILY                      the family name written to `config.json` ("dit", "umt5", "vae", "clip")
  TABLE                       its declarative `converters.table.Row` table
  IGNORE                      {layout: [regex, ...]} source keys that hold no model weight
  detect(keys)                the layout name, or None when the keys are not this family's (the DiT's
                              `detect` raises instead; it also takes an optional `dtype_of(key)`)
  config_from_keys(source, layout) -> dict   the architecture config (json-able) read from tensor shapes
  plan(layout, config) -> [Step]             the expanded conversion steps
and optionally:
  prepare(source, layout, *, keep_quantized=False) -> source   a view the table reads (prefix strip,
                              dequantisation); identity when absent
  file_shapes(config) -> {target: shape}     expected converted shapes (shape errors name both shapes)
  describe(config) -> str                    a short summary for the CLI
  LOOKS_FOR                   what `detect` looks for, for the "nothing matched" error
Families are tried in `FAMILY_MODULES` order, DiT first; a module that does not exist yet is skipped.
"""

import importlib
import inspect

from wanjax.errors import CheckpointError, UsageError

FAMILY_MODULES = ("converters.names.dit", "converters.names.umt5", "converters.names.vae",
                  "converters.names.clip")


def families() -> dict:
  """{FAMILY: module} for every family module that exists, in detection order."""
  out = {}
  for name in FAMILY_MODULES:
    try:
      mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:   # the module exists but one of its imports is missing: a real error
        raise
      continue
    out[mod.FAMILY] = mod
  return out


def get_family(name):
  fams = families()
  if name not in fams:
    raise UsageError(f"unknown model family {name!r}; valid: {', '.join(fams)}")
  return fams[name]


def _detect_one(mod, source):
  try:
    if "dtype_of" in inspect.signature(mod.detect).parameters:
      return mod.detect(source.keys(), dtype_of=source.dtype)
    return mod.detect(source.keys())
  except CheckpointError:
    return None


def detect(source, family=None):
  """(family module, layout) of a checkpoint; `family` restricts detection to one family. Raises
  CheckpointError listing what each family looked for when nothing matches."""
  mods = [get_family(family)] if family else list(families().values())
  for mod in mods:
    layout = _detect_one(mod, source)
    if layout is not None:
      return mod, layout
  lora = lora_keys(source.keys())
  if lora:
    raise CheckpointError(f"this is a LoRA / weight-diff file ({len(lora)} of its {len(source.keys())} keys, e.g. "
                          f"{lora[0]!r}), not a model checkpoint: a safetensors LoRA needs no conversion, it is merged "
                          f"when sampling (infer.sample --config.lora=PATH[:strength])")
  if family:
    mod.detect(source.keys())   # families whose detect raises give their own, more specific message
  looked = "; ".join(f"{m.FAMILY}: {getattr(m, 'LOOKS_FOR', 'its marker keys')}" for m in mods)
  sample = sorted(source.keys())[:6]
  raise CheckpointError(f"checkpoint matches no known model family or layout (looked for {looked}); it has "
                        f"{len(source.keys())} keys, e.g. {sample}")


def lora_keys(keys) -> list:
  """The keys of a LoRA or weight-diff file (every spelling `wanjax.lora` reads: lora_down/up, lora_A/B, PEFT,
  Kohya `lora_unet_...`, `.diff`/`.diff_b`/`.diff_m`), sorted; empty unless they are at least half the keys."""
  from wanjax.lora import KOHYA_PREFIXES, SUFFIXES
  roles = tuple(suffix for suffix, role in SUFFIXES if role != "alpha")
  keys = list(keys)
  found = sorted(k for k in keys if k.endswith(roles) or k.startswith(KOHYA_PREFIXES))
  found.sort(key=lambda k: not k.endswith(roles))   # a down/up key first: the clearest example
  return found if found and 2 * len(found) >= len(keys) else []


def prepare(mod, source, layout, *, keep_quantized=False):
  """The family's view of `source` for `layout` (identity for families without `prepare`)."""
  if hasattr(mod, "prepare"):
    return mod.prepare(source, layout, keep_quantized=keep_quantized)
  if keep_quantized:
    raise UsageError(f"--keep-quantized is only supported for quantised DiT checkpoints, not {mod.FAMILY}")
  return source
