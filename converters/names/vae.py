"""Name table of the Wan2.1 VAE (spec `wan_model.md` §4.7, layout rules §2.5).

Layouts:
- "wan":       the original `Wan2.1_VAE.pth` (`wan/modules/vae.py` `WanVAE_` state dict).
- "diffusers": diffusers `AutoencoderKLWan` (`vae/diffusion_pytorch_model.safetensors`).

Targets are the `wanjax.vae.WanVAE` parameters. The VAE has no stacked layers; its block list depends on the
architecture (`dim_mult`, `num_res_blocks`, `temperal_downsample`), so the table is generated from the config:
`_BLOCKS` places each block (JAX prefix, original prefix, diffusers prefix) and `_PARTS` lists the tensors of
each block kind. `TABLE` is the table of the `wan21` architecture.

Per block kind (JAX suffix | original suffix | diffusers suffix):
  residual   norm1.scale | residual.0.gamma | norm1.gamma        conv1.{kernel,bias} | residual.2.* | conv1.*
             norm2.scale | residual.3.gamma | norm2.gamma        conv2.{kernel,bias} | residual.6.* | conv2.*
             shortcut.{kernel,bias} | shortcut.* | conv_shortcut.*   (only when Cin != Cout)
  attention  norm.scale | norm.gamma | norm.gamma   to_qkv.{kernel,bias} | to_qkv.*   proj.{kernel,bias} | proj.*
  resample   conv.{kernel,bias} | resample.1.* | resample.1.*   time_conv.{kernel,bias} | time_conv.* (3-D)
Placement (JAX | original | diffusers):
  encoder.conv1 | encoder.conv1 | encoder.conv_in
  encoder.downsamples.{n} | encoder.downsamples.{n} | encoder.down_blocks.{n}
  {en,de}coder.middle.{0,1,2} | same | {en,de}coder.mid_block.{resnets.0, attentions.0, resnets.1}
  {en,de}coder.head_norm.scale | {en,de}coder.head.0.gamma | {en,de}coder.norm_out.gamma
  {en,de}coder.head_conv | {en,de}coder.head.2 | {en,de}coder.conv_out
  conv1 | conv1 | quant_conv          conv2 | conv2 | post_quant_conv
  decoder.conv1 | decoder.conv1 | decoder.conv_in
  decoder.upsamples.{n} | decoder.upsamples.{n} | decoder.up_blocks.{s}.resnets.{r} / .upsamplers.0
"""

import re

from converters.table import Row, expand
from wanjax.errors import CheckpointError
from wanjax.vae.config import VAEConfig

FAMILY = "vae"
LAYOUTS = ("wan", "diffusers")

# (JAX suffix, original suffix, diffusers suffix, transform) per block kind.
_CONV = (("kernel", "weight", "weight", "conv3d"), ("bias", "bias", "bias", "none"))
_PARTS = {
    "conv": _CONV,
    "residual": (
        ("norm1.scale", "residual.0.gamma", "norm1.gamma", "flatten"),
        ("conv1.kernel", "residual.2.weight", "conv1.weight", "conv3d"),
        ("conv1.bias", "residual.2.bias", "conv1.bias", "none"),
        ("norm2.scale", "residual.3.gamma", "norm2.gamma", "flatten"),
        ("conv2.kernel", "residual.6.weight", "conv2.weight", "conv3d"),
        ("conv2.bias", "residual.6.bias", "conv2.bias", "none"),
    ),
    "shortcut": (
        ("shortcut.kernel", "shortcut.weight", "conv_shortcut.weight", "conv3d"),
        ("shortcut.bias", "shortcut.bias", "conv_shortcut.bias", "none"),
    ),
    "attention": (
        ("norm.scale", "norm.gamma", "norm.gamma", "flatten"),
        ("to_qkv.kernel", "to_qkv.weight", "to_qkv.weight", "conv1x1_dense"),
        ("to_qkv.bias", "to_qkv.bias", "to_qkv.bias", "none"),
        ("proj.kernel", "proj.weight", "proj.weight", "conv1x1_dense"),
        ("proj.bias", "proj.bias", "proj.bias", "none"),
    ),
    "resample": (
        ("conv.kernel", "resample.1.weight", "resample.1.weight", "conv2d"),
        ("conv.bias", "resample.1.bias", "resample.1.bias", "none"),
    ),
    "time_conv": (
        ("time_conv.kernel", "time_conv.weight", "time_conv.weight", "conv3d"),
        ("time_conv.bias", "time_conv.bias", "time_conv.bias", "none"),
    ),
    "norm": (("scale", "gamma", "gamma", "flatten"),),
}


def _blocks(cfg: VAEConfig):
  """(JAX prefix, original prefix, diffusers prefix, part kinds) for every block, in module order."""
  out = []

  def mid(side):
    return [(f"{side}.middle.0", f"{side}.middle.0", f"{side}.mid_block.resnets.0", ("residual",)),
            (f"{side}.middle.1", f"{side}.middle.1", f"{side}.mid_block.attentions.0", ("attention",)),
            (f"{side}.middle.2", f"{side}.middle.2", f"{side}.mid_block.resnets.1", ("residual",))]

  def head(side):
    return [(f"{side}.head_norm", f"{side}.head.0", f"{side}.norm_out", ("norm",)),
            (f"{side}.head_conv", f"{side}.head.2", f"{side}.conv_out", ("conv",))]

  # Encoder (spec §4.3): one flat list, same index in both layouts.
  out.append(("encoder.conv1", "encoder.conv1", "encoder.conv_in", ("conv",)))
  dims = [cfg.dim * m for m in (1,) + cfg.dim_mult]
  n = 0
  for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
    for _ in range(cfg.num_res_blocks):
      kinds = ("residual", "shortcut") if cin != cout else ("residual",)
      out.append((f"encoder.downsamples.{n}", f"encoder.downsamples.{n}", f"encoder.down_blocks.{n}", kinds))
      cin, n = cout, n + 1
    if i != len(cfg.dim_mult) - 1:
      kinds = ("resample", "time_conv") if cfg.temperal_downsample[i] else ("resample",)
      out.append((f"encoder.downsamples.{n}", f"encoder.downsamples.{n}", f"encoder.down_blocks.{n}", kinds))
      n += 1
  out += mid("encoder") + head("encoder")
  out.append(("conv1", "conv1", "quant_conv", ("conv",)))
  out.append(("conv2", "conv2", "post_quant_conv", ("conv",)))
  # Decoder (spec §4.4): flat in the original, grouped per stage in diffusers.
  out.append(("decoder.conv1", "decoder.conv1", "decoder.conv_in", ("conv",)))
  out += mid("decoder")
  dims = [cfg.dim * m for m in (cfg.dim_mult[-1],) + cfg.dim_mult[::-1]]
  temperal_upsample = cfg.temperal_downsample[::-1]
  n = 0
  for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
    cin = cin // 2 if i > 0 else cin
    for r in range(cfg.num_res_blocks + 1):
      kinds = ("residual", "shortcut") if cin != cout else ("residual",)
      out.append((f"decoder.upsamples.{n}", f"decoder.upsamples.{n}", f"decoder.up_blocks.{i}.resnets.{r}", kinds))
      cin, n = cout, n + 1
    if i != len(cfg.dim_mult) - 1:
      kinds = ("resample", "time_conv") if temperal_upsample[i] else ("resample",)
      out.append((f"decoder.upsamples.{n}", f"decoder.upsamples.{n}", f"decoder.up_blocks.{i}.upsamplers.0",
                  kinds))
      n += 1
  out += head("decoder")
  return out


def rows(cfg: VAEConfig) -> tuple:
  """The name table (one Row per tensor) of the architecture `cfg`."""
  table = []
  for jax_p, wan_p, dif_p, kinds in _blocks(cfg):
    for kind in kinds:
      for jax_s, wan_s, dif_s, transform in _PARTS[kind]:
        table.append(Row(f"{jax_p}.{jax_s}", {"wan": f"{wan_p}.{wan_s}", "diffusers": f"{dif_p}.{dif_s}"},
                         transform))
  return tuple(table)


TABLE = rows(VAEConfig())

IGNORE = {"wan": [], "diffusers": []}

_MARKERS = {
    "wan": ("encoder.conv1.weight", "encoder.head.2.weight", "decoder.head.2.weight", "conv2.weight"),
    "diffusers": ("encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight",
                  "post_quant_conv.weight"),
}
LOOKS_FOR = ("'encoder.conv1.weight' + 'decoder.head.2.weight' (original Wan2.1_VAE.pth) or "
             "'encoder.conv_in.weight' + 'post_quant_conv.weight' (diffusers AutoencoderKLWan)")


def detect(keys):
  """'wan' | 'diffusers' | None from a checkpoint's key set."""
  keys = set(keys)
  for layout, marks in _MARKERS.items():
    if all(m in keys for m in marks):
      return layout
  return None


def config_from_keys(source, layout) -> dict:
  """VAEConfig fields (json-able) + "family", read from tensor shapes: `dim` from the first conv, `z_dim` from
  `conv2`, and the stage structure from the encoder's block list (residual blocks between resamples; a
  resample with `time_conv` downsamples time)."""
  if layout not in LAYOUTS:
    raise CheckpointError(f"unknown VAE layout {layout!r}; valid: {', '.join(LAYOUTS)}")
  first, post, blocks, conv = {
      "wan": ("encoder.conv1.weight", "conv2.weight", "encoder.downsamples", "residual.2.weight"),
      "diffusers": ("encoder.conv_in.weight", "post_quant_conv.weight", "encoder.down_blocks", "conv1.weight"),
  }[layout]
  keys = set(source.keys())
  dim, z_dim = int(source.shape(first)[0]), int(source.shape(post)[0])
  rx = re.compile(re.escape(blocks) + r"\.(\d+)\..*")
  count = max((int(m.group(1)) for k in keys if (m := rx.fullmatch(k))), default=-1) + 1
  stages, temporal, current = [], [], []
  for n in range(count):
    p = f"{blocks}.{n}"
    if f"{p}.{conv}" in keys:
      current.append(int(source.shape(f"{p}.{conv}")[0]))
    elif f"{p}.resample.1.weight" in keys:
      stages.append(current)
      temporal.append(f"{p}.time_conv.weight" in keys)
      current = []
    else:
      raise CheckpointError(f"{p}: neither a residual block ({p}.{conv}) nor a resample ({p}.resample.1.weight)")
  stages.append(current)
  num_res = len(stages[0])
  if num_res == 0 or any(len(s) != num_res for s in stages) or any(c % dim for s in stages for c in s):
    raise CheckpointError(f"{blocks}: stage structure {stages} (output channels of each residual block, split "
                          f"at the resamples) is not {len(stages)} stages of equal length with multiples of "
                          f"dim={dim}")
  cfg = VAEConfig(dim=dim, z_dim=z_dim, dim_mult=tuple(s[-1] // dim for s in stages), num_res_blocks=num_res,
                  temperal_downsample=tuple(temporal))
  return {"family": FAMILY, **cfg.to_json_dict()}


def vae_config(config) -> VAEConfig:
  return config if isinstance(config, VAEConfig) else VAEConfig.from_json_dict(config)


def plan(layout, config):
  """Expanded Steps for `layout`; `config` is a dict (as from `config_from_keys`) or a VAEConfig."""
  if layout not in LAYOUTS:
    raise CheckpointError(f"unknown VAE layout {layout!r}; valid: {', '.join(LAYOUTS)}")
  return expand(rows(vae_config(config)), layout, num_layers=0)


def file_shapes(config) -> dict:
  """{target: shape} of the converted file for `config` (from `nnx.eval_shape`; nothing is allocated)."""
  from flax import nnx
  from wanjax import checkpoint
  from wanjax.vae.model import WanVAE
  model = nnx.eval_shape(lambda: WanVAE(vae_config(config), policy="float32", rngs=nnx.Rngs(0)))
  return checkpoint.expected_file_shapes(nnx.state(model, nnx.Param))


def describe(config) -> str:
  c = vae_config(config)
  return (f"Wan VAE: dim {c.dim}, z_dim {c.z_dim}, dim_mult {list(c.dim_mult)}, {c.num_res_blocks} residual "
          f"blocks per stage, temporal downsample {list(c.temperal_downsample)}")
