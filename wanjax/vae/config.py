"""Wan VAE architecture config: a frozen dataclass, named presets, and the latent normalisation constants.

Mirrors the reference `WanVAE_` / `_video_vae` arguments (`wan/modules/vae.py`; spec `wan_model.md` §4.1, §4.6)
and diffusers `AutoencoderKLWan(base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample)`. Only what the
checkpoint decides lives here (the converter infers it from tensor shapes); precision is a model keyword.
"""

import dataclasses

from wanjax import config_json
from wanjax.errors import UsageError

# Spec §4.6: per-channel statistics of Wan2.1 latents (z_dim = 16).
WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

TEMPORAL_FACTOR = 4   # frames per latent frame (after the first)
SPATIAL_FACTOR = 8    # pixels per latent pixel


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig:
  dim: int = 96
  z_dim: int = 16
  dim_mult: tuple = (1, 2, 4, 4)
  num_res_blocks: int = 2
  # Quirk: the reference spells it "temperal"; kept so configs match `_video_vae` / diffusers keywords.
  temperal_downsample: tuple = (False, True, True)
  # Latent normalisation (§4.6). None = the Wan2.1 constants when z_dim == 16, else identity (mean 0, std 1):
  # no released VAE with another z_dim exists, so there are no constants to copy.
  latents_mean: tuple = None
  latents_std: tuple = None

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
    set_("dim_mult", tuple(int(m) for m in self.dim_mult))
    set_("temperal_downsample", tuple(bool(t) for t in self.temperal_downsample))
    n = len(self.dim_mult)
    if n < 2:
      raise UsageError(f"dim_mult={self.dim_mult} needs at least 2 entries, e.g. (1, 2, 4, 4)")
    if len(self.temperal_downsample) != n - 1:
      raise UsageError(f"temperal_downsample={self.temperal_downsample} needs {n - 1} entries "
                       f"(one per downsample of dim_mult={self.dim_mult})")
    if any(self.dim * m % 2 for m in self.dim_mult):
      raise UsageError(f"dim={self.dim} times every dim_mult {self.dim_mult} must be even (upsampling halves "
                       f"the channels)")
    if self.num_res_blocks < 1 or self.z_dim < 1 or self.dim < 1:
      raise UsageError(f"dim={self.dim}, z_dim={self.z_dim}, num_res_blocks={self.num_res_blocks} must be >= 1")
    if self.latents_mean is None:
      set_("latents_mean", WAN21_LATENT_MEAN if self.z_dim == 16 else (0.0,) * self.z_dim)
    if self.latents_std is None:
      set_("latents_std", WAN21_LATENT_STD if self.z_dim == 16 else (1.0,) * self.z_dim)
    set_("latents_mean", tuple(float(v) for v in self.latents_mean))
    set_("latents_std", tuple(float(v) for v in self.latents_std))
    for name in ("latents_mean", "latents_std"):
      if len(getattr(self, name)) != self.z_dim:
        raise UsageError(f"{name} has {len(getattr(self, name))} values; z_dim={self.z_dim} needs {self.z_dim}")

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(self.temperal_downsample)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  def to_json_dict(self) -> dict:
    d = dataclasses.asdict(self)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

  @classmethod
  def from_json_dict(cls, d: dict) -> "VAEConfig":
    return cls(**config_json.known_kwargs(cls, d, what="VAE",
                                          ignore=("family", "name", "source_layout")))   # converter bookkeeping

  @classmethod
  def load(cls, path) -> "VAEConfig":
    return config_json.load(cls, path)


PRESETS = {
    "wan21": VAEConfig(),
    # Tests only: small widths, mult values unlike wan21 so a mixed-up stage fails loudly
    # (channels 12, 24, 36; 2·z_dim = 32).
    "tiny": VAEConfig(dim=12, dim_mult=(1, 2, 3, 3)),
}


def get_config(name: str) -> VAEConfig:
  """Returns the preset called `name`; unknown names list the valid ones."""
  try:
    return PRESETS[name]
  except KeyError:
    raise UsageError(f"unknown VAE preset {name!r}; valid: {', '.join(sorted(PRESETS))}") from None
