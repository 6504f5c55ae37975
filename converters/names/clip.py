"""Name table of the CLIP ViT-H/14 visual tower (spec `wan_model.md` §5.4, layout rules §2.5).

Layouts:
- "openclip": the original `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (`wan/modules/clip.py`
  `XLMRobertaCLIP` state dict; the visual tower under `visual.`). `to_qkv` is fused `[3D, D]`: rows
  0:D / D:2D / 2D:3D are q / k / v, split here with `part=(k, 3)`.
- "hf": transformers `CLIPVisionModel` / `CLIPVisionModelWithProjection` / `CLIPModel` files as published
  (keys under `vision_model.`; what diffusers Wan I2V pipelines ship in `image_encoder/`).
- "hf_bare": the same without the `vision_model.` prefix (what transformers >= 5 `save_pretrained` writes
  for a `CLIPVisionModel`).

Targets are the `wanjax.image.clip.CLIPVisionTower` parameters, per layer (`blocks.{i}.…`). Only the first
`num_used_layers` blocks are planned; later blocks, the post-norm, the projection head and the text tower are
ignored (Wan uses the penultimate block's tokens).
"""

import re

from converters.table import Row, expand
from wanjax.errors import CheckpointError, UsageError

FAMILY = "clip"


def _hf(name):
  """The HF pattern in both spellings (with and without the `vision_model.` prefix)."""
  return {"hf": f"vision_model.{name}", "hf_bare": name}


_OC = "visual.transformer.{i}"
_HFL = "encoder.layers.{i}"

TABLE = (
    Row("patch_embedding.kernel", {"openclip": "visual.patch_embedding.weight",
                                   **_hf("embeddings.patch_embedding.weight")}, "conv2d"),
    # cls: [1, 1, D] (open-clip) / [D] (HF); pos: [1, L, D] / [L, D].
    Row("cls_embedding", {"openclip": "visual.cls_embedding"}, "flatten"),
    Row("cls_embedding", _hf("embeddings.class_embedding")),
    Row("pos_embedding", {"openclip": "visual.pos_embedding"}, "squeeze0"),
    Row("pos_embedding", _hf("embeddings.position_embedding.weight")),
    Row("pre_norm.scale", {"openclip": "visual.pre_norm.weight", **_hf("pre_layrnorm.weight")}),
    Row("pre_norm.bias", {"openclip": "visual.pre_norm.bias", **_hf("pre_layrnorm.bias")}),
    *(Row(f"blocks.{{i}}.{n}.{p}", {"openclip": f"{_OC}.{n}.{t}", **_hf(f"{_HFL}.layer_norm{n[-1]}.{t}")})
      for n in ("norm1", "norm2") for p, t in (("scale", "weight"), ("bias", "bias"))),
    # Fused to_qkv (open-clip) vs separate q/k/v_proj (HF).
    *(Row(f"blocks.{{i}}.attn.{q}.kernel", {"openclip": f"{_OC}.attn.to_qkv.weight"}, "linear_T", part=(k, 3))
      for k, q in enumerate("qkv")),
    *(Row(f"blocks.{{i}}.attn.{q}.bias", {"openclip": f"{_OC}.attn.to_qkv.bias"}, part=(k, 3))
      for k, q in enumerate("qkv")),
    *(Row(f"blocks.{{i}}.attn.{q}.kernel", _hf(f"{_HFL}.self_attn.{q}_proj.weight"), "linear_T") for q in "qkv"),
    *(Row(f"blocks.{{i}}.attn.{q}.bias", _hf(f"{_HFL}.self_attn.{q}_proj.bias")) for q in "qkv"),
    Row("blocks.{i}.attn.proj.kernel", {"openclip": f"{_OC}.attn.proj.weight",
                                        **_hf(f"{_HFL}.self_attn.out_proj.weight")}, "linear_T"),
    Row("blocks.{i}.attn.proj.bias", {"openclip": f"{_OC}.attn.proj.bias", **_hf(f"{_HFL}.self_attn.out_proj.bias")}),
    # open-clip mlp = Sequential(Linear, GELU, Linear): indices 0 and 2.
    Row("blocks.{i}.mlp.fc1.kernel", {"openclip": f"{_OC}.mlp.0.weight", **_hf(f"{_HFL}.mlp.fc1.weight")},
        "linear_T"),
    Row("blocks.{i}.mlp.fc1.bias", {"openclip": f"{_OC}.mlp.0.bias", **_hf(f"{_HFL}.mlp.fc1.bias")}),
    Row("blocks.{i}.mlp.fc2.kernel", {"openclip": f"{_OC}.mlp.2.weight", **_hf(f"{_HFL}.mlp.fc2.weight")},
        "linear_T"),
    Row("blocks.{i}.mlp.fc2.bias", {"openclip": f"{_OC}.mlp.2.bias", **_hf(f"{_HFL}.mlp.fc2.bias")}),
)

# Regexes of source keys that are read by nothing on purpose. The block rows match the well-formed keys of
# any block: blocks the plan needs are still required (missing ones raise), blocks past `num_used_layers`
# (the last one in Wan's file) are skipped, and a malformed key inside a block is still reported.
_OC_BLOCK = r"visual\.transformer\.\d+\.(?:norm[12]|attn\.to_qkv|attn\.proj|mlp\.[02])\.(?:weight|bias)"
_HF_BLOCK = (r"encoder\.layers\.\d+\.(?:layer_norm[12]|self_attn\.[qkv]_proj|self_attn\.out_proj|mlp\.fc[12])"
             r"\.(?:weight|bias)")
IGNORE = {
    "openclip": [r"textual\..*", r"log_scale", r"visual\.post_norm\.(?:weight|bias)", r"visual\.head",
                 _OC_BLOCK],
    "hf": [r"vision_model\.post_layernorm\.(?:weight|bias)", r"vision_model\.embeddings\.position_ids",
           r"visual_projection\.weight", r"text_model\..*", r"text_projection\.weight", r"logit_scale",
           r"vision_model\." + _HF_BLOCK],
    "hf_bare": [r"post_layernorm\.(?:weight|bias)", r"embeddings\.position_ids", _HF_BLOCK],
}

_LAYER_RX = {"openclip": r"visual\.transformer\.(\d+)\..*", "hf": r"vision_model\.encoder\.layers\.(\d+)\..*",
             "hf_bare": r"encoder\.layers\.(\d+)\..*"}

# Keys that identify each layout (all must be present).
_MARKERS = {
    "openclip": ("visual.patch_embedding.weight", "visual.cls_embedding",
                 "visual.transformer.0.attn.to_qkv.weight"),
    "hf": ("vision_model.embeddings.class_embedding", "vision_model.encoder.layers.0.self_attn.q_proj.weight"),
    "hf_bare": ("embeddings.class_embedding", "encoder.layers.0.self_attn.q_proj.weight"),
}

LOOKS_FOR = ("'visual.transformer.0.attn.to_qkv.weight' (open-clip) or "
             "'[vision_model.]encoder.layers.0.self_attn.q_proj.weight' (transformers CLIP)")

# Head counts are not in the weights; known widths map to their published head count, others use head dim 64.
_HEADS_BY_WIDTH = {1280: 16, 1024: 16, 768: 12}


def detect(keys):
  """'openclip' | 'hf' | 'hf_bare' | None from a checkpoint's key set."""
  keys = set(keys)
  for layout, marks in _MARKERS.items():
    if all(m in keys for m in marks):
      return layout
  return None


def _num_layers(keys, layout):
  rx = re.compile(_LAYER_RX[layout])
  idx = {int(m.group(1)) for k in keys if (m := rx.fullmatch(k))}
  return max(idx) + 1 if idx else 0


def config_from_keys(source, layout, *, num_heads=None, num_used_layers=None) -> dict:
  """CLIPVisionConfig fields (json-able) + "family" from tensor shapes.

  Not in the weights: `num_heads` (known widths: 1280 -> 16; else width / 64 unless given), `eps` (1e-5) and
  `num_used_layers` (default: all blocks but the last, as Wan uses the penultimate block's output).
  """
  name = {row.target: row.sources[layout] for row in TABLE if layout in row.sources}
  width, _, patch, _ = source.shape(name["patch_embedding.kernel"])  # [D, 3, p, p]
  num_tokens = source.shape(name["pos_embedding"])[-2]
  mlp_dim = source.shape(name["blocks.{i}.mlp.fc1.kernel"].replace("{i}", "0"))[0]
  grid = round((num_tokens - 1) ** 0.5)
  if grid * grid != num_tokens - 1:
    raise CheckpointError(f"CLIP position embedding has {num_tokens} rows; expected 1 + a square number of "
                          f"patches (257 for ViT-H/14 at 224)")
  num_layers = _num_layers(source.keys(), layout)
  if num_heads is None:
    num_heads = _HEADS_BY_WIDTH.get(width, width // 64 if width % 64 == 0 else None)
    if num_heads is None:
      raise UsageError(f"cannot infer the CLIP head count for width {width} (not in the weights); pass --num-heads")
  return {"family": FAMILY, "image_size": int(grid * patch), "patch_size": int(patch), "width": int(width),
          "num_layers": num_layers, "num_heads": int(num_heads), "mlp_dim": int(mlp_dim), "eps": 1e-5,
          "num_used_layers": int(num_used_layers if num_used_layers is not None else max(num_layers - 1, 1))}


def _get(config, field):
  return config[field] if isinstance(config, dict) else getattr(config, field)


def plan(layout, config):
  """Expanded Steps for `layout`: the first `num_used_layers` blocks. `config` is a dict or CLIPVisionConfig."""
  return expand(TABLE, layout, num_layers=_get(config, "num_used_layers"))



def file_shapes(config) -> dict:
  """{target: shape} of the converted file for `config` (from `nnx.eval_shape`; nothing is allocated)."""
  from flax import nnx
  from wanjax import checkpoint
  from wanjax.image.clip import CLIPVisionConfig, CLIPVisionTower
  cfg = config if isinstance(config, CLIPVisionConfig) else CLIPVisionConfig.from_json_dict(config)
  model = nnx.eval_shape(lambda: CLIPVisionTower(cfg, policy="float32", rngs=nnx.Rngs(0)))
  return checkpoint.expected_file_shapes(nnx.state(model, nnx.Param))


def describe(config) -> str:
  c = config if isinstance(config, dict) else config.to_json_dict()
  return (f"CLIP vision tower: image {c['image_size']}, patch {c['patch_size']}, width {c['width']}, "
          f"{c['num_heads']} heads, mlp {c['mlp_dim']}, first {c['num_used_layers']} of {c['num_layers']} blocks")
