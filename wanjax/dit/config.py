"""DiT architecture config: a frozen dataclass, named presets, and inference from checkpoint shapes.

Mirrors the reference `WanModel.__init__` arguments (`wan/modules/model.py`; spec `wan_model.md` §1.1). Only what
the checkpoint decides lives here; dtype policy, scan/unroll, remat and attention implementation are
constructor keywords of the model.
"""

import dataclasses
import json

from wanjax import config_json
from wanjax.errors import UsageError

MODEL_TYPES = ("t2v", "i2v", "flf2v")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiTConfig:
  dim: int
  ffn_dim: int
  num_heads: int
  num_layers: int
  model_type: str = "t2v"          # "t2v" | "i2v" | "flf2v"
  in_dim: int = 16                 # 36 for i2v/flf2v: noisy latent 16 + mask 4 + condition latent 16
  out_dim: int = 16
  text_dim: int = 4096
  text_len: int = 512
  freq_dim: int = 256
  patch_size: tuple = (1, 2, 2)
  eps: float = 1e-6
  image_dim: int = 1280            # CLIP ViT-H/14 width (i2v/flf2v only)
  # Guidance embedding for CFG-distilled students (post_training.md A.2); absent in released checkpoints.
  guidance_embed: bool = False

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise UsageError(f"model_type={self.model_type!r}; valid: {', '.join(MODEL_TYPES)}")
    for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "text_len", "freq_dim"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UsageError(f"DiT config {name}={v!r} must be a whole number >= 1")
    if self.dim % self.num_heads:
      raise UsageError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
    if self.head_dim % 2:
      raise UsageError(f"head dim {self.head_dim} must be even for RoPE")
    if self.model_type != "t2v" and self.in_dim != 36:
      raise UsageError(f"model_type={self.model_type!r} needs in_dim=36, got {self.in_dim}")
    object.__setattr__(self, "patch_size", tuple(self.patch_size))

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def has_image_input(self) -> bool:
    return self.model_type in ("i2v", "flf2v")

  @property
  def num_image_tokens(self) -> int:
    return {"t2v": 0, "i2v": 257, "flf2v": 514}[self.model_type]

  @property
  def patch_dim(self) -> int:
    pt, ph, pw = self.patch_size
    return pt * ph * pw

  def to_json_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["patch_size"] = list(self.patch_size)
    return d

  @classmethod
  def from_json_dict(cls, d: dict) -> "DiTConfig":
    kw = config_json.known_kwargs(cls, d, what="DiT", ignore=("_class_name", "_diffusers_version", "window_size",
                                                               "qk_norm", "cross_attn_norm", "name"))
    return cls(**{k: (tuple(v) if k == "patch_size" else v) for k, v in kw.items()})

  def save(self, path):
    with open(path, "w") as f:
      json.dump(self.to_json_dict(), f, indent=2, sort_keys=True)

  @classmethod
  def load(cls, path) -> "DiTConfig":
    return config_json.load(cls, path)


PRESETS = {
    "t2v_1_3b": DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "t2v_14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "i2v_14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, model_type="i2v", in_dim=36),
    "flf2v_14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, model_type="flf2v",
                           in_dim=36),
    # Tests only: small, mutually different sizes so that a swapped axis fails loudly.
    "tiny": DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=3, text_dim=20, text_len=7),
    "tiny_i2v": DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=3, text_dim=20, text_len=7,
                          model_type="i2v", in_dim=36, image_dim=18),
    # The toy world (docs/toyworld.md): 64x64x17 clips -> 5x8x8 latents, 80 tokens; reads the `toyworld` umT5
    # (text_dim 32) at text_len 32. ~1.2 M parameters.
    "toyworld": DiTConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=4, text_dim=32, text_len=32),
}
# I2V 480P and 720P share the architecture (different weights).
PRESETS["i2v_14b_480p"] = PRESETS["i2v_14b"]
PRESETS["i2v_14b_720p"] = PRESETS["i2v_14b"]


def get_config(name: str) -> DiTConfig:
  """Returns the preset called `name`; unknown names list the valid ones."""
  try:
    return PRESETS[name]
  except KeyError:
    raise UsageError(f"unknown DiT preset {name!r}; valid: {', '.join(sorted(PRESETS))}") from None
