"""LoRA and weight-diff files: parse, map onto DiT parameters, merge in float32; export in LightX2V format.

Mirrors LightX2V's loader (`lightx2v/utils/lora_loader.py`, `models/networks/wan/lora_adapter.py`) and
ComfyUI's merge (spec `wan_model.md` §2.4 and pitfall 13, `distillation.md` §5.3):

  W += s · (alpha/r if the file has `alpha` else 1) · (up @ down)    up [out, r], down [r, in]
  b += s · diff_b      W += s · diff (norm weights too)      modulation += s · diff_m

Key styles: `<base>.lora_down/.lora_up.weight`, `lora_A/lora_B(.default)(.weight)`, `.lora.down/.up.weight`,
`_lora.down/.up.weight`, `.lora_linear_layer.down/.up.weight`, `.alpha`, `.diff`, `.diff_b`, `.diff_m`, PEFT
`lora_B.bias`; prefixes `model.diffusion_model.`, `diffusion_model.`, `transformer.`, `base_model.model.`,
`unet.`, `model.` or none; Kohya `lora_unet_blocks_0_self_attn_q` underscore paths. Module names may be
original Wan or diffusers names. They are resolved through the converter's name table
(`converters.names.dit.TABLE`, pure data, no torch), so there is no second hand-written mapping.

In the JAX layout the kernel is `[in, out]`, so a pair adds `(up @ down).T = down.T @ up.T`. All LoRAs given
to one `merge_loras` call are summed per parameter in float32 and cast back once, on device, keeping each
parameter's sharding.
"""

import dataclasses
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from wanjax.checkpoint import SafetensorsReader, flat_params, save_tensors
from wanjax.errors import CheckpointError, UsageError, format_key_problems

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "unet.", "model.")
KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_")
# (key suffix, role). Roles: down/up (a low-rank pair), alpha, diff (weight delta), diff_b (bias delta),
# diff_m (modulation delta; its base is the block, e.g. `blocks.3.diff_m`).
SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_B.bias", "diff_b"),  # PEFT `lora_bias=True`: the bias delta lives on the up projection
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_A", "down"), (".lora_B", "up"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff_m", "diff_m"), (".diff", "diff"),
)
# Which torch tensor of the module each role changes.
_ATTR = {"down": "weight", "up": "weight", "diff": "weight", "diff_b": "bias", "diff_m": "modulation"}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  path: str
  strength: float = 1.0


def parse_lora_specs(spec) -> list:
  """'a.safetensors:0.8,b.safetensors' -> [LoraSpec]; the strength follows the LAST ':' (Windows drive
  letters stay in the path) and defaults to 1."""
  out = []
  for part in filter(None, (p.strip() for p in str(spec or "").split(","))):
    head, sep, tail = part.rpartition(":")
    if not sep:
      out.append(LoraSpec(part))
      continue
    try:
      strength = float(tail)
    except ValueError:
      if any(c in tail for c in "/\\."):  # 'C:\loras\x.safetensors': the colon belongs to the path
        out.append(LoraSpec(part))
        continue
      raise UsageError(f"bad LoRA strength {tail!r} in {part!r}; expected 'path:strength', e.g. "
                       f"'style.safetensors:0.8'") from None
    if not math.isfinite(strength):   # float() takes 'nan' and 'inf', which would merge NaN/inf weights
      raise UsageError(f"LoRA strength {tail!r} in {part!r} is not a finite number; e.g. 'style.safetensors:0.8'")
    out.append(LoraSpec(head.strip(), strength))
  return out


def read_lora_file(path) -> dict:
  """{key: numpy view} of a LoRA safetensors file (memory-mapped)."""
  if not os.path.isfile(path):
    raise UsageError(f"LoRA file {path!r} does not exist")
  if not str(path).endswith(".safetensors"):
    raise UsageError(f"LoRA file {path!r} is not a .safetensors file; rewrite a .pt/.pth LoRA as safetensors with `python -m converters.convert --src LORA.pt --out DIR` "
                     f"(writes DIR/LORA.safetensors)")
  reader = SafetensorsReader([path])
  return {k: reader.view(k) for k in reader.keys()}


# ---------------------------------------------------------------------------------------------------------
# Module-path index derived from the converter name table
# ---------------------------------------------------------------------------------------------------------

def _default_table():
  from converters.names import dit  # pure data (no torch): the single source of DiT key names
  return dit.TABLE


def _state_path(target):
  """'blocks.{i}.self_attn.q.kernel' -> ('blocks.self_attn.q.kernel', stacked?)."""
  path = re.sub(r"\.\{i\}(?=\.|$)", "", target)
  return path, path != target


def module_index(table) -> dict:
  """{(source module pattern, attr): (target pattern, transform)} over every layout of `table`.

  attr is the torch tensor name of the module (`weight`, `bias`, `modulation`); diffusers'
  `scale_shift_table` counts as `modulation`. Kohya underscore spellings are added as well.
  """
  index = {}
  for row in table:
    if row.part is not None:
      continue  # fused source tensors cannot be LoRA targets one-to-one
    for src in row.sources.values():
      module, _, attr = src.rpartition(".")
      attr = "modulation" if attr == "scale_shift_table" else attr
      for key in {(module, attr), (module.replace(".", "_"), attr)}:
        prev = index.get(key)
        if prev is not None and prev != (row.target, row.transform):
          raise AssertionError(f"name table maps {key} to both {prev} and {(row.target, row.transform)}")
        index[key] = (row.target, row.transform)
  return index


def _split_key(key):
  """-> (base module path, role, separator) or None for an unrecognised suffix."""
  for p in KOHYA_PREFIXES:
    if key.startswith(p):
      key, sep = key[len(p):], "_"
      break
  else:
    sep = "."
    for p in PREFIXES:
      if key.startswith(p):
        key = key[len(p):]
        break
  for suffix, role in SUFFIXES:
    if key.endswith(suffix):
      return key[:-len(suffix)], role, sep
  return None


def _resolve(base, attr, sep, index):
  """Concrete module path + tensor attr -> (target pattern, transform, layer or None) or None."""
  hit = index.get((base, attr))
  if hit is not None:
    return hit + (None,)
  parts = base.split(sep)
  for j, p in enumerate(parts):
    if p.isdigit():
      hit = index.get((sep.join(parts[:j] + ["{i}"] + parts[j + 1:]), attr))
      if hit is not None:
        return hit + (int(p),)
  return None


# ---------------------------------------------------------------------------------------------------------
# Parsing a file into per-parameter contributions
# ---------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Contrib:
  downs: list = dataclasses.field(default_factory=list)   # [r, in]
  ups: list = dataclasses.field(default_factory=list)     # [out, r], strength and alpha/r folded in
  diff: np.ndarray = None                                  # JAX layout, strength folded in


def _f32(x):
  return np.asarray(x).astype(np.float32)


def _collect(tensors, strength, name, index, shapes, quantized, contribs, unmatched, problems):
  """Adds one LoRA's contributions to `contribs[param][layer]`."""
  groups = {}
  for key in tensors:
    parsed = _split_key(key)
    if parsed is None:
      unmatched.append((key, f"unrecognised LoRA key suffix ({name})"))
      continue
    base, role, sep = parsed
    groups.setdefault((base, sep), {}).setdefault(role, []).append(key)

  for (base, sep), roles in sorted(groups.items()):
    for role, keys in roles.items():
      if len(keys) > 1:
        problems.append((keys[0], f"the same {role!r} tensor appears under several key styles: {sorted(keys)}"))
    one = {role: keys[0] for role, keys in roles.items()}
    if ("down" in one) != ("up" in one):
      have, miss = ("down", "up") if "down" in one else ("up", "down")
      problems.append((one[have], f"LoRA {have} tensor without its {miss} tensor"))
      continue
    present = (["pair"] if "down" in one else []) + [r for r in ("diff", "diff_b", "diff_m") if r in one]
    if "alpha" in one and not present:   # a lone alpha (its pair missing or misspelt): report it, not drop it
      unmatched.append((one["alpha"], "alpha without a lora down/up pair"))
    for role in present:
      attr = _ATTR["down" if role == "pair" else role]
      keys = [one["down"], one["up"]] if role == "pair" else [one[role]]
      hit = _resolve(base, attr, sep, index)
      param = layer = None
      if hit is not None:
        target, transform, layer = hit
        param, stacked = _state_path(target)
        if param not in shapes or stacked != (layer is not None) or (
            stacked and layer >= shapes[param][0]):
          hit = None
      if hit is None:
        unmatched += [(k, "") for k in keys]
        continue
      if param in quantized:
        raise UsageError(f"{keys[0]}: cannot merge a LoRA into the quantised kernel {param}; merge LoRAs "
                         f"before quantising (wanjax.quant.quantize_model)")
      want = tuple(shapes[param][1:] if layer is not None else shapes[param])
      c = contribs.setdefault(param, {}).setdefault(layer, _Contrib())
      if role == "pair":
        down, up = _f32(tensors[one["down"]]), _f32(tensors[one["up"]])
        r = down.shape[0] if down.ndim else 0
        if r == 0:   # alpha / r would divide by zero
          problems.append((one["down"], f"down {down.shape} has rank 0; expected [rank, in] with rank >= 1"))
          continue
        if up.ndim < 2 or up.shape[1] != r:
          problems.append((one["up"], f"up {up.shape} does not match down {down.shape} (rank {r})"))
          continue
        scale = 1.0
        if "alpha" in one:
          scale = float(np.asarray(tensors[one["alpha"]], np.float64).reshape(-1)[0]) / r
        coef = np.float32(strength * scale)
        if transform == "linear_T" and down.ndim == 2 and up.ndim == 2:
          if want != (down.shape[1], up.shape[0]):
            problems.append((one["down"], f"LoRA (in {down.shape[1]}, out {up.shape[0]}) vs model kernel "
                                          f"{want} ({param})"))
            continue
          c.downs.append(down)
          c.ups.append(up * coef)
        else:  # e.g. a conv LoRA: build the torch-layout delta on the host and treat it as a diff
          delta = (up.reshape(up.shape[0], r) @ down.reshape(r, -1)).reshape((up.shape[0],) + down.shape[1:])
          _add_diff(c, delta * coef, transform, want, one["down"], param, problems)
      else:
        _add_diff(c, _f32(tensors[one[role]]) * np.float32(strength), transform, want, one[role], param,
                  problems)


def _add_diff(c, delta, transform, want, key, param, problems):
  from converters import transforms  # numpy-only layout transforms shared with the converter
  if tuple(transforms.SHAPES[transform](delta.shape)) != want:
    problems.append((key, f"delta {delta.shape} (torch layout) vs model {want} ({param})"))
    return
  delta = transforms.apply(transform, delta).astype(np.float32)
  c.diff = delta if c.diff is None else c.diff + delta


# ---------------------------------------------------------------------------------------------------------
# Merging on device
# ---------------------------------------------------------------------------------------------------------

def _merge_impl(w, idx, down, up, diff, *, stacked, sharding):
  """w [L, ...] (stacked) or [...]; entry j adds to layer idx[j]: down[j].T @ up[j].T and diff[j]."""
  dtype = w.dtype
  ws = w if stacked else w[None]

  def body(j, ws):
    l = idx[j]
    cur = jax.lax.dynamic_index_in_dim(ws, l, 0, keepdims=False).astype(jnp.float32)
    if down is not None:
      cur = cur + jnp.einsum("ri,or->io", down[j], up[j], precision=jax.lax.Precision.HIGHEST)
    if diff is not None:
      cur = cur + diff[j]
    return jax.lax.dynamic_update_index_in_dim(ws, cur.astype(dtype), l, 0)

  ws = jax.lax.fori_loop(0, idx.shape[0], body, ws)
  out = ws if stacked else ws[0]
  if sharding is not None:
    out = jax.lax.with_sharding_constraint(out, sharding)
  return out


_merge = jax.jit(_merge_impl, static_argnames=("stacked", "sharding"))
_merge_donated = jax.jit(_merge_impl, static_argnames=("stacked", "sharding"), donate_argnums=(0,))


def _apply(w, per_layer, stacked, donate):
  layers = sorted(per_layer, key=lambda l: -1 if l is None else l)
  idx = np.asarray([0 if l is None else l for l in layers], np.int32)
  entries = [per_layer[l] for l in layers]
  down = up = diff = None
  rmax = max((sum(d.shape[0] for d in c.downs) for c in entries), default=0)
  if rmax:
    din, dout = next(c.downs[0].shape[1] for c in entries if c.downs), next(
        c.ups[0].shape[0] for c in entries if c.ups)
    down = np.zeros((len(entries), rmax, din), np.float32)
    up = np.zeros((len(entries), dout, rmax), np.float32)
    for j, c in enumerate(entries):
      if c.downs:  # several LoRAs on one layer: concatenate along the rank axis (coefficients are in `up`)
        d, u = np.concatenate(c.downs, 0), np.concatenate(c.ups, 1)
        down[j, :d.shape[0]], up[j, :, :d.shape[0]] = d, u
  if any(c.diff is not None for c in entries):
    shape = next(c.diff.shape for c in entries if c.diff is not None)
    diff = np.zeros((len(entries),) + shape, np.float32)
    for j, c in enumerate(entries):
      if c.diff is not None:
        diff[j] = c.diff
  if not isinstance(w, jax.Array):
    w = jnp.asarray(w)
  sharding = w.sharding if isinstance(w.sharding, jax.sharding.NamedSharding) else None
  fn = _merge_donated if donate and jax.default_backend() != "cpu" else _merge
  return fn(w, idx, down, up, diff, stacked=stacked, sharding=sharding)


def _as_items(loras):
  if isinstance(loras, str):
    return [(s.path, s.strength) for s in parse_lora_specs(loras)]
  items = []
  for item in loras:
    if isinstance(item, LoraSpec):
      items.append((item.path, item.strength))
    elif isinstance(item, (str, dict)):
      items.append((item, 1.0))
    else:
      src, strength = item
      if not math.isfinite(float(strength)):
        raise UsageError(f"LoRA strength {strength!r} for {src if isinstance(src, str) else 'an in-memory LoRA'} "
                         f"is not a finite number")
      items.append((src, float(strength)))
  return items


def merge_loras(target, loras, *, allow_unmatched=False, table=None, donate=False, dry_run=False):
  """Merges LoRA / diff files into DiT parameters; returns the merged nnx.State (or the updated Module).

  target: an nnx.State of the DiT params (stacked `blocks.*`) or a Module (updated in place).
  loras: 'a.safetensors:0.8,b.safetensors' or a list of LoraSpec / (path or {key: array}, strength).
  Keys that match no parameter raise UsageError listing them, unless `allow_unmatched` (one warning).
  `donate`: let each updated parameter's old buffer be reused (the input state must not be used after).
  `dry_run`: only match keys and check shapes (target may be abstract, e.g. from `nnx.eval_shape`); returns the
  sorted parameter paths the LoRAs would change.
  """
  module = target if isinstance(target, nnx.Module) else None
  state = nnx.state(module, nnx.Param) if module is not None else target
  index = module_index(table if table is not None else _default_table())
  flat = flat_params(state)
  shapes = {p: tuple(np.shape(v.get_value())) for p, v in flat.items()}
  quantized = {p[:-len("_scale")] for p in flat if p.endswith(".kernel_scale")}
  contribs, unmatched, problems = {}, [], []
  for src, strength in _as_items(loras):
    name = src if isinstance(src, str) else "<in-memory LoRA>"
    tensors = read_lora_file(src) if isinstance(src, str) else src
    before = len(unmatched)
    _collect(tensors, strength, name, index, shapes, quantized, contribs, unmatched, problems)
    if len(unmatched) > before and not allow_unmatched:
      raise UsageError(f"{name}: {len(unmatched) - before} LoRA key(s) match no model parameter (skip them "
                       f"with --config.lora_allow_unmatched=True in infer.sample, --lora-allow-unmatched in "
                       f"infer.forward, allow_unmatched=True in Python):\n" + format_key_problems(unmatched[before:]))
  if problems:
    raise CheckpointError("LoRA tensors do not fit the model:\n" + format_key_problems(problems))
  if unmatched:
    logging.warning("skipping %d LoRA key(s) that match no model parameter: %s", len(unmatched),
                    ", ".join(sorted(k for k, _ in unmatched)[:20]) + (" ..." if len(unmatched) > 20 else ""))
  if dry_run:
    return sorted(contribs)
  if not contribs:
    logging.warning("LoRA merge: no parameter changed")
  new = {}
  for param, per_layer in contribs.items():
    stacked = None not in per_layer
    new[param] = _apply(flat[param].get_value(), per_layer, stacked, donate)
  logging.info("merged LoRA deltas into %d parameters", len(new))

  def fill(path, var):
    key = ".".join(str(p) for p in path)
    return var.replace(new[key]) if key in new else var

  merged = nnx.map_state(fill, state)
  if module is not None:
    nnx.update(module, merged)
    return module
  return merged


# ---------------------------------------------------------------------------------------------------------
# Export (LightX2V / ComfyUI key format)
# ---------------------------------------------------------------------------------------------------------

def _export_index(table):
  """{state param path: (wan module pattern, stacked?)} for Linear kernels."""
  out = {}
  for row in table:
    src = row.sources.get("wan")
    if src is None or row.transform != "linear_T" or not src.endswith(".weight"):
      continue
    param, stacked = _state_path(row.target)
    out[param] = (src[:-len(".weight")], stacked)
  return out


def save_lora(path, loras: dict, alpha=None, *, dtype=np.float32, prefix="diffusion_model.", table=None,
              metadata=None):
  """Writes {jax param path: (down [r, in], up [out, r])} as `diffusion_model.<module>.lora_down/up.weight`
  (+ `.alpha` if given). Paths are per layer (`blocks.3.self_attn.q.kernel`) or stacked
  (`blocks.self_attn.q.kernel` with down [L, r, in], up [L, out, r])."""
  index = _export_index(table if table is not None else _default_table())
  tensors = {}

  def put(module, down, up):
    down, up = np.asarray(down), np.asarray(up)
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
      raise UsageError(f"{module}: LoRA down {down.shape} / up {up.shape} must be [r, in] / [out, r]")
    tensors[f"{prefix}{module}.lora_down.weight"] = down.astype(dtype)
    tensors[f"{prefix}{module}.lora_up.weight"] = up.astype(dtype)
    if alpha is not None:
      tensors[f"{prefix}{module}.alpha"] = np.asarray(alpha, np.float32)

  for param, (down, up) in sorted(loras.items()):
    if param in index:
      module, stacked = index[param]
      if not stacked:
        put(module, down, up)
        continue
      if np.ndim(down) != 3 or np.ndim(up) != 3:
        raise UsageError(f"{param} is stacked over layers: expected down [L, r, in] and up [L, out, r], got "
                         f"{np.shape(down)} and {np.shape(up)}")
      for i in range(np.shape(down)[0]):
        put(module.replace("{i}", str(i)), down[i], up[i])
      continue
    m = re.fullmatch(r"(\w+)\.(\d+)\.(.+)", param)
    hit = index.get(f"{m.group(1)}.{m.group(3)}") if m else None
    if hit is None or not hit[1]:
      raise UsageError(f"cannot export a LoRA for {param!r}: not a Linear kernel of the DiT name table; "
                       f"valid e.g. 'blocks.0.self_attn.q.kernel' or 'blocks.self_attn.q.kernel'")
    put(hit[0].replace("{i}", m.group(2)), down, up)
  save_tensors(path, tensors, metadata=metadata)
  return sorted(tensors)
