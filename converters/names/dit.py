"""THE DiT name table: original Wan / diffusers torch keys -> wanjax `WanDiT` parameters, plus detection,
config inference and the conversion plan.

Mirrors the reference module tree of `wan/modules/model.py` (`WanModel`) and diffusers'
`WanTransformer3DModel` (spec `wan_model.md` §2.2-§2.5). ComfyUI (`model.diffusion_model.` prefix),
Self-Forcing/CausVid `.pt` files (`{"generator": {"model.<key>": ...}}`) and LightX2V int8/fp8 files are the
"wan" layout behind a prefix-strip / dequantisation view (`prepare`), not separate rows.

Quantised kernels on disk (written by `convert --keep-quantized`, read by `wanjax/quant.py`):
  `<path>.kernel`        int8 or float8_e4m3fn `[in, out]` (the torch `[out, in]` weight, transposed)
  `<path>.kernel_scale`  float32 `[1, out]` per-output-channel scale, so that
                         `y = (x @ kernel.astype(f32)) * kernel_scale + bias`.
Only the LightX2V set is quantised (distillation.md §5.4): the Linears of `self_attn`, `cross_attn` and `ffn`
in every block. `config.json` then carries `"quantization": {"format": "int8" | "float8_e4m3fn", ...}`.
"""

import json
import os
import re

from absl import logging

from converters import table
from converters.quantized import QuantizedView, has_quantized_keys, quantized_format
from converters.reader import PrefixedSource
from converters.table import Row
from wanjax.dit.config import DiTConfig
from wanjax.errors import CheckpointError, UsageError

FAMILY = "dit"
LAYOUTS = ("wan", "diffusers", "comfyui", "lightx2v_int8", "lightx2v_fp8", "self_forcing")
QUANT_SCALE_SUFFIX = "_scale"   # `<path>.kernel` -> `<path>.kernel_scale`
QUANTIZABLE = re.compile(r"blocks\.\d+\.(self_attn|cross_attn|ffn)\.[a-z0-9_]+\.kernel")
# The same Linears as original-layout source weights (what `--keep-quantized` keeps quantised).
QUANTIZABLE_SOURCE = re.compile(r"blocks\.\d+\.(self_attn|cross_attn|ffn)\.[a-z0-9_]+\.weight")
# config.json keys that are not DiTConfig fields.
META_KEYS = ("family", "source_layout", "quantization")


def _dense(target, wan, diffusers, when=()):
  """A torch Linear (`weight [out, in]`, `bias`) -> a wanjax Dense (`kernel [in, out]`, `bias`)."""
  return (Row(f"{target}.kernel", {"wan": f"{wan}.weight", "diffusers": f"{diffusers}.weight"}, "linear_T", when),
          Row(f"{target}.bias", {"wan": f"{wan}.bias", "diffusers": f"{diffusers}.bias"}, "none", when))


def _norm(target, wan, diffusers, when=(), bias=True):
  """LayerNorm/RMSNorm `weight` (`bias`) -> `scale` (`bias`)."""
  rows = (Row(f"{target}.scale", {"wan": f"{wan}.weight", "diffusers": f"{diffusers}.weight"}, "none", when),)
  if bias:
    rows += (Row(f"{target}.bias", {"wan": f"{wan}.bias", "diffusers": f"{diffusers}.bias"}, "none", when),)
  return rows


def _raw(target, wan, diffusers, when=()):
  return (Row(target, {"wan": wan, "diffusers": diffusers}, "none", when),)


_B, _DB = "blocks.{i}", "blocks.{i}"
_CE = "condition_embedder"
_IE = "condition_embedder.image_embedder"

TABLE = (
    # ---- embeddings
    Row("patch_embedding.kernel", {"wan": "patch_embedding.weight", "diffusers": "patch_embedding.weight"},
        "conv3d"),
    Row("patch_embedding.bias", {"wan": "patch_embedding.bias", "diffusers": "patch_embedding.bias"}),
    *_dense("text_embedding.fc1", "text_embedding.0", f"{_CE}.text_embedder.linear_1"),
    *_dense("text_embedding.fc2", "text_embedding.2", f"{_CE}.text_embedder.linear_2"),
    *_dense("time_embedding.fc1", "time_embedding.0", f"{_CE}.time_embedder.linear_1"),
    *_dense("time_embedding.fc2", "time_embedding.2", f"{_CE}.time_embedder.linear_2"),
    *_dense("time_projection.fc", "time_projection.1", f"{_CE}.time_proj"),
    # ---- blocks (stacked in the model; one file key per layer)
    *_raw(f"{_B}.modulation", f"{_B}.modulation", f"{_DB}.scale_shift_table"),
    *_dense(f"{_B}.self_attn.q", f"{_B}.self_attn.q", f"{_DB}.attn1.to_q"),
    *_dense(f"{_B}.self_attn.k", f"{_B}.self_attn.k", f"{_DB}.attn1.to_k"),
    *_dense(f"{_B}.self_attn.v", f"{_B}.self_attn.v", f"{_DB}.attn1.to_v"),
    *_dense(f"{_B}.self_attn.o", f"{_B}.self_attn.o", f"{_DB}.attn1.to_out.0"),
    *_norm(f"{_B}.self_attn.norm_q", f"{_B}.self_attn.norm_q", f"{_DB}.attn1.norm_q", bias=False),
    *_norm(f"{_B}.self_attn.norm_k", f"{_B}.self_attn.norm_k", f"{_DB}.attn1.norm_k", bias=False),
    # Quirk (§2.3, §8.2): original norm3 (affine cross-attn pre-norm) is diffusers norm2.
    *_norm(f"{_B}.norm3", f"{_B}.norm3", f"{_DB}.norm2"),
    *_dense(f"{_B}.cross_attn.q", f"{_B}.cross_attn.q", f"{_DB}.attn2.to_q"),
    *_dense(f"{_B}.cross_attn.k", f"{_B}.cross_attn.k", f"{_DB}.attn2.to_k"),
    *_dense(f"{_B}.cross_attn.v", f"{_B}.cross_attn.v", f"{_DB}.attn2.to_v"),
    *_dense(f"{_B}.cross_attn.o", f"{_B}.cross_attn.o", f"{_DB}.attn2.to_out.0"),
    *_norm(f"{_B}.cross_attn.norm_q", f"{_B}.cross_attn.norm_q", f"{_DB}.attn2.norm_q", bias=False),
    *_norm(f"{_B}.cross_attn.norm_k", f"{_B}.cross_attn.norm_k", f"{_DB}.attn2.norm_k", bias=False),
    *_dense(f"{_B}.cross_attn.k_img", f"{_B}.cross_attn.k_img", f"{_DB}.attn2.add_k_proj", when=("i2v",)),
    *_dense(f"{_B}.cross_attn.v_img", f"{_B}.cross_attn.v_img", f"{_DB}.attn2.add_v_proj", when=("i2v",)),
    *_norm(f"{_B}.cross_attn.norm_k_img", f"{_B}.cross_attn.norm_k_img", f"{_DB}.attn2.norm_added_k",
           when=("i2v",), bias=False),
    *_dense(f"{_B}.ffn.fc1", f"{_B}.ffn.0", f"{_DB}.ffn.net.0.proj"),
    *_dense(f"{_B}.ffn.fc2", f"{_B}.ffn.2", f"{_DB}.ffn.net.2"),
    # ---- head
    *_raw("head.modulation", "head.modulation", "scale_shift_table"),
    *_dense("head.head", "head.head", "proj_out"),
    # ---- image embedding (i2v / flf2v)
    *_norm("img_emb.norm1", "img_emb.proj.0", f"{_IE}.norm1", when=("i2v",)),
    *_dense("img_emb.fc1", "img_emb.proj.1", f"{_IE}.ff.net.0.proj", when=("i2v",)),
    *_dense("img_emb.fc2", "img_emb.proj.3", f"{_IE}.ff.net.2", when=("i2v",)),
    *_norm("img_emb.norm2", "img_emb.proj.4", f"{_IE}.norm2", when=("i2v",)),
    # diffusers name inferred from the module layout (not in diffusers' single-file rename table).
    *_raw("img_emb.emb_pos", "img_emb.emb_pos", f"{_IE}.pos_embed", when=("flf2v",)),
    # ---- CFG-distilled students only (post_training.md A.2): no torch layout, listed for completeness.
    Row("guidance_embedding.fc1.kernel", {}, "none", ("guidance",)),
    Row("guidance_embedding.fc1.bias", {}, "none", ("guidance",)),
    Row("guidance_embedding.fc2.kernel", {}, "none", ("guidance",)),
    Row("guidance_embedding.fc2.bias", {}, "none", ("guidance",)),
)

# Keys some files carry that hold no model weight: ComfyUI scaled-fp8 markers and activation scales, and the
# stray `norm_added_q` diffusers ignores on load (§2.3).
_IGNORE_COMMON = (r"scaled_fp8", r".*\.scale_input")
IGNORE = {layout: _IGNORE_COMMON for layout in LAYOUTS}
IGNORE["diffusers"] = _IGNORE_COMMON + (r"blocks\.\d+\.attn2\.norm_added_q\.(weight|bias)",)

# ---------------------------------------------------------------------------------------------- detection

_WAN_MARKERS = ("patch_embedding.weight", "time_projection.1.weight", "head.head.weight")
_DIFFUSERS_MARKERS = ("patch_embedding.weight", "condition_embedder.time_proj.weight", "proj_out.weight")
# Prefix -> layout; longest first so that 'model.diffusion_model.' is not taken for Self-Forcing's 'model.'.
_PREFIXES = (("model.diffusion_model.", "comfyui"), ("diffusion_model.", "comfyui"), ("model.", "self_forcing"))
LOOKS_FOR = (f"original Wan keys {list(_WAN_MARKERS)} without prefix (wan, lightx2v_int8/fp8 when "
             f"'.weight_scale' keys exist), with prefix 'model.diffusion_model.' or 'diffusion_model.' (comfyui) "
             f"or 'model.' (self_forcing), or diffusers keys {list(_DIFFUSERS_MARKERS)}")


def _prefix_of(layout, keys):
  if layout == "self_forcing":
    return "model."
  if layout == "comfyui":
    return next(p for p, lay in _PREFIXES if lay == "comfyui" and p + _WAN_MARKERS[0] in keys)
  return ""


def detect(keys, dtype_of=None):
  """Layout name of a DiT checkpoint from its keys ('wan' | 'diffusers' | 'comfyui' | 'lightx2v_int8' |
  'lightx2v_fp8' | 'self_forcing'); raises CheckpointError listing what it looked for.

  `dtype_of(key)` (optional) tells int8 from fp8 LightX2V files; without it a quantised file reads as int8
  (both are dequantised the same way)."""
  keys = set(keys)
  if all(m in keys for m in _WAN_MARKERS):
    if has_quantized_keys(keys):
      try:
        fmt = quantized_format(keys, dtype_of) if dtype_of is not None else "int8"
      except CheckpointError:
        # Mixed or unsupported quantised dtypes: still this family and layout; `prepare` then raises the
        # specific error naming the dtypes (raising here would read as "matches no known model family").
        fmt = "int8"
      return "lightx2v_fp8" if fmt == "float8_e4m3fn" else "lightx2v_int8"
    return "wan"
  for prefix, layout in _PREFIXES:
    if all(prefix + m in keys for m in _WAN_MARKERS):
      return layout
  if all(m in keys for m in _DIFFUSERS_MARKERS):
    return "diffusers"
  sample = sorted(keys)[:6]
  raise CheckpointError(f"not a Wan DiT checkpoint in any known layout: looked for {LOOKS_FOR}; found "
                        f"{len(keys)} keys, e.g. {sample}")


def table_layout(layout) -> str:
  """The table column a detected layout reads through: 'diffusers' or 'wan'."""
  if layout not in LAYOUTS:
    raise UsageError(f"unknown DiT layout {layout!r}; valid: {', '.join(LAYOUTS)}")
  return "diffusers" if layout == "diffusers" else "wan"


def prepare(source, layout, *, keep_quantized=False):
  """The view the table reads: prefix stripped, quantised weights dequantised to float32 (or, with
  `keep_quantized`, kept as stored plus per-channel `<name>.weight_scale [out, 1]`). Idempotent."""
  if getattr(source, "prepared_layout", None) == layout:
    return source
  table_layout(layout)
  view = source
  prefix = _prefix_of(layout, set(source.keys()))
  if prefix:
    view = PrefixedSource(view, prefix)
    dropped = len(source.keys()) - len(view.keys())
    if dropped:
      logging.info("ignoring %d keys without the %r prefix (not DiT weights)", dropped, prefix)
  if has_quantized_keys(view.keys()):
    # Only the block matmuls stay quantised (what wanjax.quant loads); ComfyUI scaled-fp8 files also scale the
    # embeddings and the head, which are dequantised.
    view = QuantizedView(view, keep=keep_quantized and (lambda w: bool(QUANTIZABLE_SOURCE.fullmatch(w))))
    if keep_quantized:
      _check_all_block_matmuls_kept(view)
    rest = sorted(set(view.scaled_weights()) - set(view.quantized_weights())) if keep_quantized else []
    if rest:
      logging.warning("--keep-quantized keeps the block matmuls quantised; dequantising %d other quantised "
                      "weights to float32, e.g. %s", len(rest), rest[:3])
  elif keep_quantized:
    raise UsageError(f"--keep-quantized needs a quantised checkpoint ('.weight_scale' or '.scale_weight' keys); "
                     f"this one is layout {layout!r} without them")
  view.prepared_layout = layout
  return view


def _check_all_block_matmuls_kept(view):
  """--keep-quantized needs every block matmul quantised: the model stacks each one over the layers in a single
  dtype (`wanjax.quant.quantize_model`), so a file with some of them stored in float cannot be kept as stored."""
  matmuls = [k for k in view.keys() if QUANTIZABLE_SOURCE.fullmatch(k) and len(view.shape(k)) == 2]
  kept = set(view.quantized_weights())
  plain = sorted(k for k in matmuls if k not in kept)
  if plain:
    raise CheckpointError(
        f"--keep-quantized: {len(plain)} of {len(matmuls)} block matmul weights are stored unquantised (e.g. "
        f"{', '.join(plain[:3])}) and {len(kept)} are {view.format} (e.g. {', '.join(sorted(kept)[:2]) or 'none'}); "
        f"the model keeps all block matmuls in one dtype, so convert without --keep-quantized (every weight "
        f"dequantised to float) and quantise when sampling (--config.quant=int8 or fp8)")


# ------------------------------------------------------------------------------------ config from shapes


def _shape(source, key):
  if key not in source:
    raise CheckpointError(f"{key}: missing from checkpoint (needed to infer the model config)")
  return tuple(source.shape(key))


def _json_beside(source):
  """The `config.json` next to the checkpoint file(s) behind `source` (following wrapper views), or None."""
  s = source
  while s is not None:
    paths = getattr(s, "paths", None) or ([s.path] if getattr(s, "path", None) else None)
    if paths:
      f = os.path.join(os.path.dirname(os.path.abspath(paths[0])), "config.json")
      if os.path.exists(f):
        with open(f) as fh:
          try:
            return json.load(fh), f
          except json.JSONDecodeError as e:
            raise CheckpointError(f"{f}: not valid JSON ({e})") from None
      return None
    s = getattr(s, "base", None)
  return None


def config_from_keys(source, layout, *, num_heads=None, config_json=None) -> dict:
  """Infers the DiTConfig (as a json-able dict) from tensor shapes; heads, eps and text_len come from
  `config_json` (default: the config.json beside the checkpoint, original or diffusers names), else head dim
  128 (every released Wan2.1 DiT). `num_heads` overrides both."""
  view = prepare(source, layout)
  tl = table_layout(layout)
  src = {r.target: r.sources[tl] for r in TABLE if tl in r.sources}
  dim, in_dim, *patch = _shape(view, src["patch_embedding.kernel"])
  time_proj = _shape(view, src["time_projection.fc.kernel"])
  layer_re = re.compile(r"blocks\.(\d+)\.")
  layers = {int(m.group(1)) for k in view.keys() if (m := layer_re.match(k))}
  if not layers:
    raise CheckpointError("no 'blocks.N.' keys: cannot infer num_layers")
  patch = tuple(patch)
  out_dim = _shape(view, src["head.head.kernel"])[0] // (patch[0] * patch[1] * patch[2])
  img1, pos = src["img_emb.fc1.kernel"], src["img_emb.emb_pos"]
  model_type = "flf2v" if pos in view else ("i2v" if img1 in view else "t2v")
  cfg = dict(dim=dim, ffn_dim=_shape(view, src["blocks.{i}.ffn.fc1.kernel"].format(i=0))[0],
             num_layers=max(layers) + 1, model_type=model_type, in_dim=in_dim, out_dim=out_dim,
             text_dim=_shape(view, src["text_embedding.fc1.kernel"])[1],
             freq_dim=_shape(view, src["time_embedding.fc1.kernel"])[1], patch_size=list(patch))
  if time_proj[0] != 6 * dim:
    raise CheckpointError(f"{src['time_projection.fc.kernel']}: shape {time_proj}, expected ({6 * dim}, {dim}) "
                          f"for dim={dim}")
  if model_type != "t2v":
    cfg["image_dim"] = _shape(view, img1)[1]
  found = _json_beside(view) if config_json is None else (config_json, "config_json")
  heads = None
  if found is not None:
    js, where = found
    jdim = js.get("dim", (js.get("num_attention_heads") or 0) * (js.get("attention_head_dim") or 0) or None)
    jlayers = js.get("num_layers")
    if (jdim is not None and jdim != dim) or (jlayers is not None and jlayers != cfg["num_layers"]):
      logging.warning("ignoring %s: it describes dim=%s num_layers=%s but the weights have dim=%d num_layers=%d",
                      where, jdim, jlayers, dim, cfg["num_layers"])
    else:
      heads = js.get("num_heads", js.get("num_attention_heads"))
      if "eps" in js:
        cfg["eps"] = float(js["eps"])
      if "text_len" in js:
        cfg["text_len"] = int(js["text_len"])
      logging.info("read num_heads=%s from %s", heads, where)
  if num_heads is not None:
    heads = int(num_heads)
  if heads is None:
    if dim % 128:
      raise UsageError(f"cannot infer num_heads: dim={dim} is not a multiple of the released head dim 128 and no "
                       f"config.json is beside the checkpoint; pass --num-heads")
    heads = dim // 128
  cfg["num_heads"] = int(heads)
  cfg = dit_config(cfg).to_json_dict()   # validates, and writes every field (defaults included)
  if isinstance(view, QuantizedView) and view.keep:
    cfg["quantization"] = {"format": view.format, "scale": "per_output_channel",
                           "kernels": "blocks.N.{self_attn,cross_attn,ffn}.*.kernel (+ .kernel_scale [1, out])"}
  return cfg


# ------------------------------------------------------------------------------------------------- plan


def dit_config(config: dict) -> DiTConfig:
  """DiTConfig from a converted `config.json` dict (drops the converter's meta keys)."""
  return DiTConfig.from_json_dict({k: v for k, v in config.items() if k not in META_KEYS})


def tags(cfg: DiTConfig) -> tuple:
  t = {"t2v": (), "i2v": ("i2v",), "flf2v": ("i2v", "flf2v")}[cfg.model_type]
  return t + (("guidance",) if cfg.guidance_embed else ())


def plan(layout, config):
  """The concrete conversion steps for `layout` (a detected layout name) and `config` (a config dict)."""
  cfg = dit_config(config)
  steps = table.expand(TABLE, table_layout(layout), num_layers=cfg.num_layers, tags=tags(cfg))
  if config.get("quantization"):
    steps = steps + [table.Step(s.source + QUANT_SCALE_SUFFIX, s.target + QUANT_SCALE_SUFFIX, "linear_T")
                     for s in steps if QUANTIZABLE.fullmatch(s.target)]
  return steps


def file_shapes(config) -> dict:
  """Target key -> shape of every tensor a converted torch DiT file holds (JAX layout, per-layer keys).
  The guidance embedding has no torch source, so converted files never hold it."""
  cfg = config if isinstance(config, DiTConfig) else dit_config(config)
  d, m, pt, ph, pw = cfg.dim, cfg.ffn_dim, *cfg.patch_size
  dense = lambda name, i, o: {f"{name}.kernel": (i, o), f"{name}.bias": (o,)}  # noqa: E731
  out = {"patch_embedding.kernel": (pt, ph, pw, cfg.in_dim, d), "patch_embedding.bias": (d,),
         **dense("text_embedding.fc1", cfg.text_dim, d), **dense("text_embedding.fc2", d, d),
         **dense("time_embedding.fc1", cfg.freq_dim, d), **dense("time_embedding.fc2", d, d),
         **dense("time_projection.fc", d, 6 * d),
         "head.modulation": (1, 2, d), **dense("head.head", d, pt * ph * pw * cfg.out_dim)}
  block = {"modulation": (1, 6, d), "norm3.scale": (d,), "norm3.bias": (d,),
           **dense("ffn.fc1", d, m), **dense("ffn.fc2", m, d)}
  attn = ("q", "k", "v", "o") + (("k_img", "v_img") if cfg.has_image_input else ())
  for a in ("self_attn", "cross_attn"):
    for p in attn if a == "cross_attn" else attn[:4]:
      block.update(dense(f"{a}.{p}", d, d))
    block.update({f"{a}.norm_q.scale": (d,), f"{a}.norm_k.scale": (d,)})
  if cfg.has_image_input:
    block["cross_attn.norm_k_img.scale"] = (d,)
    e = cfg.image_dim
    out.update({"img_emb.norm1.scale": (e,), "img_emb.norm1.bias": (e,), **dense("img_emb.fc1", e, e),
                **dense("img_emb.fc2", e, d), "img_emb.norm2.scale": (d,), "img_emb.norm2.bias": (d,)})
  if cfg.model_type == "flf2v":
    out["img_emb.emb_pos"] = (1, cfg.num_image_tokens, e)
  for i in range(cfg.num_layers):
    out.update({f"blocks.{i}.{k}": v for k, v in block.items()})
  if isinstance(config, dict) and config.get("quantization"):
    out.update({k + QUANT_SCALE_SUFFIX: (1, v[1]) for k, v in out.items() if QUANTIZABLE.fullmatch(k)})
  return out


def describe(config) -> str:
  """One-line summary for the CLI."""
  cfg = dit_config(config)
  q = config.get("quantization") or {}
  return (f"{cfg.model_type} dim={cfg.dim} layers={cfg.num_layers} heads={cfg.num_heads} ffn={cfg.ffn_dim}"
          + (f" quantized={q.get('format')}" if q else ""))
