"""Name table of the umT5-XXL text encoder (spec `wan_model.md` §3.6, layout rules §2.5).

Layouts:
- "wan": the original `models_t5_umt5-xxl-enc-bf16.pth` (`wan/modules/t5.py` `T5Encoder` state dict).
- "hf":  transformers `UMT5EncoderModel` (what diffusers Wan pipelines ship in `text_encoder/`).

Targets are the `wanjax.text.umt5.UMT5Encoder` parameters, per layer (`blocks.{i}.…`).
"""

import re

from converters.reader import TensorSource
from converters.table import Row, expand

FAMILY = "umt5"

_HF_ATTN = "encoder.block.{i}.layer.0.SelfAttention"
_HF_FFN = "encoder.block.{i}.layer.1.DenseReluDense"

TABLE = (
    Row("token_embedding.embedding", {"wan": "token_embedding.weight", "hf": "shared.weight"}),
    Row("blocks.{i}.norm1.scale", {"wan": "blocks.{i}.norm1.weight",
                                   "hf": "encoder.block.{i}.layer.0.layer_norm.weight"}),
    *(Row(f"blocks.{{i}}.attn.{p}.kernel", {"wan": f"blocks.{{i}}.attn.{p}.weight",
                                            "hf": f"{_HF_ATTN}.{p}.weight"}, "linear_T")
      for p in ("q", "k", "v", "o")),
    Row("blocks.{i}.pos_embedding.embedding", {"wan": "blocks.{i}.pos_embedding.embedding.weight",
                                               "hf": f"{_HF_ATTN}.relative_attention_bias.weight"}),
    Row("blocks.{i}.norm2.scale", {"wan": "blocks.{i}.norm2.weight",
                                   "hf": "encoder.block.{i}.layer.1.layer_norm.weight"}),
    # gate = the GELU branch (HF wi_0; `ffn.gate` is Sequential(Linear, GELU) in the reference), fc1 = the
    # linear branch (HF wi_1), fc2 = HF wo.
    Row("blocks.{i}.ffn.gate.kernel", {"wan": "blocks.{i}.ffn.gate.0.weight", "hf": f"{_HF_FFN}.wi_0.weight"},
        "linear_T"),
    Row("blocks.{i}.ffn.fc1.kernel", {"wan": "blocks.{i}.ffn.fc1.weight", "hf": f"{_HF_FFN}.wi_1.weight"},
        "linear_T"),
    Row("blocks.{i}.ffn.fc2.kernel", {"wan": "blocks.{i}.ffn.fc2.weight", "hf": f"{_HF_FFN}.wo.weight"},
        "linear_T"),
    Row("norm.scale", {"wan": "norm.weight", "hf": "encoder.final_layer_norm.weight"}),
)

IGNORE = {
    "wan": [],
    "hf": [
        r"encoder\.embed_tokens\.weight",  # the same tensor as `shared.weight` (tied); we read that one
        # A full UMT5 (encoder-decoder) checkpoint: only the encoder is used.
        r"decoder\..*",
        r"lm_head\.weight",
    ],
}

LOOKS_FOR = ("'token_embedding.weight' + 'blocks.0.attn.q.weight' (original Wan .pth) or "
             "'encoder.block.0.layer.0.SelfAttention.q.weight' (transformers UMT5EncoderModel)")

# Keys that identify each layout (all must be present).
_MARKERS = {
    "wan": ("token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.gate.0.weight"),
    "hf": ("encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.final_layer_norm.weight"),
}


def detect(keys):
  """'wan' | 'hf' | None from a checkpoint's key set."""
  keys = set(keys)
  for layout, marks in _MARKERS.items():
    if all(m in keys for m in marks):
      return layout
  return None


def _num_layers(keys, pattern):
  rx = re.compile(pattern)
  idx = {int(m.group(1)) for k in keys if (m := rx.fullmatch(k))}
  return max(idx) + 1 if idx else 0


def config_from_keys(source, layout) -> dict:
  """UMT5Config fields (json-able) + "family" read from tensor shapes. max_dist and eps are not in the weights
  and keep the reference values (128, 1e-6)."""
  name = {row.target: row.sources[layout] for row in TABLE}
  at0 = lambda target: source.shape(name[target].replace("{i}", "0"))  # noqa: E731
  vocab, dim = source.shape(name["token_embedding.embedding"])
  num_buckets, num_heads = at0("blocks.{i}.pos_embedding.embedding")
  dim_attn = at0("blocks.{i}.attn.q.kernel")[0]
  dim_ffn = at0("blocks.{i}.ffn.fc1.kernel")[0]
  layer_rx = {"wan": r"blocks\.(\d+)\..*", "hf": r"encoder\.block\.(\d+)\..*"}[layout]
  return {"family": FAMILY, "vocab": int(vocab), "dim": int(dim), "dim_attn": int(dim_attn),
          "dim_ffn": int(dim_ffn), "num_heads": int(num_heads), "num_layers": _num_layers(source.keys(), layer_rx),
          "num_buckets": int(num_buckets), "max_dist": 128, "eps": 1e-6}


def plan(layout, config):
  """Expanded Steps for `layout`; `config` is a dict (as from `config_from_keys`) or a UMT5Config."""
  n = config["num_layers"] if isinstance(config, dict) else config.num_layers
  return expand(TABLE, layout, num_layers=n)


class _TiedEmbeddingView(TensorSource):
  """An HF file that stored the tied embedding only as `encoder.embed_tokens.weight` (no `shared.weight`):
  serves it under the name the table reads."""

  def __init__(self, base):
    self.base = base

  def _name(self, key):
    return "encoder.embed_tokens.weight" if key == "shared.weight" else key

  def keys(self):
    return ["shared.weight" if k == "encoder.embed_tokens.weight" else k for k in self.base.keys()]

  def shape(self, key):
    return self.base.shape(self._name(key))

  def dtype(self, key):
    return self.base.dtype(self._name(key))

  def get(self, key):
    return self.base.get(self._name(key))


def prepare(source, layout, *, keep_quantized=False):
  """The view the table reads: resolves the HF tied embedding when only its encoder copy is stored."""
  if keep_quantized:
    from wanjax.errors import UsageError
    raise UsageError("--keep-quantized is only supported for quantised DiT checkpoints, not umt5")
  keys = set(source.keys())
  if layout == "hf" and "shared.weight" not in keys and "encoder.embed_tokens.weight" in keys:
    return _TiedEmbeddingView(source)
  return source


def file_shapes(config) -> dict:
  """{target: shape} of the converted file for `config` (from `nnx.eval_shape`; nothing is allocated)."""
  from flax import nnx
  from wanjax import checkpoint
  from wanjax.text.umt5 import UMT5Config, UMT5Encoder
  cfg = config if isinstance(config, UMT5Config) else UMT5Config.from_json_dict(config)
  model = nnx.eval_shape(lambda: UMT5Encoder(cfg, policy="float32", rngs=nnx.Rngs(0)))
  return checkpoint.expected_file_shapes(nnx.state(model, nnx.Param))


def describe(config) -> str:
  c = config if isinstance(config, dict) else config.to_json_dict()
  return (f"umT5 encoder: vocab {c['vocab']}, dim {c['dim']}, {c['num_heads']} heads x "
          f"{c['dim_attn'] // c['num_heads']}, ffn {c['dim_ffn']}, {c['num_layers']} layers")
