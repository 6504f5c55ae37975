"""Wan VAE parity against diffusers `AutoencoderKLWan` (random weights), through the converter name table.

The torch reference is built at a tiny width (base_dim 12, dim_mult (1, 2, 3, 3): channels 12/24/36, z_dim 16)
with every parameter randomised (norm gammas included), converted through the "diffusers" table, written and
loaded by `load_vae`, and compared on encode (mu, normalised with the §4.6 constants applied here on the torch
side) and decode (clamped video). The "wan" layout is checked by renaming the diffusers keys back to the
original names through the same table rows.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from converters import engine
from converters.names import vae as names
from converters.reader import DictSource
from wanjax.vae import config as vae_config
from wanjax.vae.load import load_vae

pytestmark = pytest.mark.torch

ABS_TOL = 1e-4        # fp32: max|jax - diffusers| on normalised latents and on pixels (brief)
REL_TOL = 1e-4        # and relative to max|diffusers|
CFG = vae_config.get_config("tiny")
H, W = 16, 24         # latent 2 x 3


@pytest.fixture(scope="module")
def torch_vae():
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(0)
  model = diffusers.AutoencoderKLWan(base_dim=CFG.dim, z_dim=CFG.z_dim, dim_mult=list(CFG.dim_mult),
                                     num_res_blocks=CFG.num_res_blocks,
                                     temperal_downsample=list(CFG.temperal_downsample)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("gamma"):
        p.copy_(torch.empty_like(p).uniform_(0.5, 1.5))
      elif name.endswith("bias"):
        p.copy_(torch.empty_like(p).uniform_(-0.2, 0.2))
      else:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.empty_like(p).uniform_(-1.0, 1.0) * (1.5 / fan_in) ** 0.5)
    # Keep decoded pixels mostly inside [-1, 1] so the final clamp does not hide differences.
    model.decoder.conv_out.weight.mul_(0.25)
  return model


def _convert(sd, layout, out_dir):
  source = DictSource(sd)
  assert names.detect(source.keys()) == layout
  config = names.config_from_keys(source, layout)
  steps = names.plan(layout, config)
  engine.write_model(source, steps, str(out_dir), config=config, ignore=names.IGNORE[layout],
                     expected=names.file_shapes(config))
  return config


@pytest.fixture(scope="module")
def converted(torch_vae, tmp_path_factory):
  out = tmp_path_factory.mktemp("vae_diffusers")
  config = _convert(torch_vae.state_dict(), "diffusers", out)
  return config, load_vae(str(out))


def _video(t, seed):
  rng = np.random.default_rng(seed)
  return rng.uniform(-1, 1, (1, t, H, W, 3)).astype(np.float32)   # [B, T, H, W, 3]


def _torch_encode(model, video):
  import torch
  with torch.no_grad():
    x = torch.from_numpy(video).permute(0, 4, 1, 2, 3)               # [B, 3, T, H, W]
    mu = model.encode(x).latent_dist.mean.permute(0, 2, 3, 4, 1).numpy()
  mean, std = np.array(CFG.latents_mean, np.float32), np.array(CFG.latents_std, np.float32)
  return (mu - mean) * (1.0 / std)                                   # diffusers returns unnormalised latents


def _torch_decode(model, latent):
  import torch
  mean, std = np.array(CFG.latents_mean, np.float32), np.array(CFG.latents_std, np.float32)
  z = latent / (1.0 / std) + mean
  with torch.no_grad():
    out = model.decode(torch.from_numpy(np.ascontiguousarray(z)).permute(0, 4, 1, 2, 3)).sample
  return out.permute(0, 2, 3, 4, 1).numpy()


def _check(got, ref, what):
  got = np.asarray(got, np.float64)
  err = float(np.max(np.abs(got - ref)))
  rel = err / float(np.max(np.abs(ref)))
  assert got.shape == ref.shape, (what, got.shape, ref.shape)
  assert err <= ABS_TOL and rel <= REL_TOL, f"{what}: max abs err {err:.2e}, rel {rel:.2e}"
  return err


def test_config_inferred_from_keys(converted):
  config, _ = converted
  assert names.vae_config(config) == CFG
  assert config["family"] == "vae"


@pytest.mark.parametrize("frames", [9, 5])
def test_encode_decode_match_diffusers(torch_vae, converted, frames):
  _, vae = converted
  video = _video(frames, seed=frames)
  ref_z = _torch_encode(torch_vae, video)
  z = np.asarray(vae.encode(jnp.asarray(video)))
  assert z.shape == (1, 1 + (frames - 1) // 4, H // 8, W // 8, CFG.z_dim)
  _check(z, ref_z, f"encode T={frames}")
  # Decode the reference latent (not ours) so the two decoders see identical inputs.
  ref_x = _torch_decode(torch_vae, ref_z)
  inside = float(np.mean(np.abs(ref_x) < 1.0))
  assert inside > 0.9, f"only {inside:.0%} of reference pixels are unclamped; the test would be weak"
  x = np.asarray(vae.decode(jnp.asarray(ref_z)))
  _check(x, ref_x, f"decode T={frames}")


def test_wan_layout_matches_diffusers_layout(torch_vae, converted, tmp_path):
  """Renames the diffusers keys to the original `Wan2.1_VAE.pth` names through the table rows, converts via
  the "wan" layout and checks identical weights and outputs."""
  config, vae_d = converted
  sd = torch_vae.state_dict()
  wan_sd = {row.sources["wan"]: sd[row.sources["diffusers"]] for row in names.rows(CFG)}
  assert len(wan_sd) == len(sd)
  assert "encoder.downsamples.8.time_conv.weight" in wan_sd and "decoder.upsamples.11.resample.1.weight" in wan_sd
  assert _convert(wan_sd, "wan", tmp_path) == config
  vae_w = load_vae(str(tmp_path))
  from flax import nnx
  from wanjax import checkpoint
  flat_d = checkpoint.flat_params(nnx.state(vae_d, nnx.Param))
  flat_w = checkpoint.flat_params(nnx.state(vae_w, nnx.Param))
  assert sorted(flat_d) == sorted(flat_w)
  for k in flat_d:
    np.testing.assert_array_equal(np.asarray(flat_d[k].get_value()), np.asarray(flat_w[k].get_value()), err_msg=k)
  video = _video(5, seed=3)
  _check(np.asarray(vae_w.encode(jnp.asarray(video))), _torch_encode(torch_vae, video), "encode (wan layout)")


def test_convert_cli_from_wan_pth(torch_vae, converted, tmp_path):
  """The original `.pth` layout through the converter registry (detection, torch reader, config.json)."""
  import torch
  from converters.convert import convert_checkpoint
  sd = torch_vae.state_dict()
  pth = tmp_path / "Wan2.1_VAE.pth"
  torch.save({row.sources["wan"]: sd[row.sources["diffusers"]] for row in names.rows(CFG)}, pth)
  summary = convert_checkpoint(str(pth), str(tmp_path / "out"), progress=False)
  assert (summary["family"], summary["layout"], summary["tensors"]) == ("vae", "wan", len(sd))
  vae = load_vae(str(tmp_path / "out"))
  assert vae.cfg == CFG
  ref = converted[1].decoder.upsamples[11].conv.kernel[...]
  np.testing.assert_array_equal(np.asarray(vae.decoder.upsamples[11].conv.kernel[...]), np.asarray(ref))


def test_wan21_table_matches_spec():
  """The real architecture: 194 tensors, 126.9 M parameters (spec §4.1), and the §4.7 key spot checks."""
  steps = {s.source: s.target for s in names.plan("wan", vae_config.get_config("wan21"))}
  shapes = names.file_shapes(vae_config.get_config("wan21"))
  assert len(steps) == 194 and len(shapes) == 194
  assert abs(sum(int(np.prod(s)) for s in shapes.values()) / 1e6 - 126.9) < 0.05
  assert shapes[steps["decoder.upsamples.3.time_conv.weight"]] == (3, 1, 1, 384, 768)
  assert shapes[steps["decoder.upsamples.4.shortcut.weight"]] == (1, 1, 1, 192, 384)
  assert shapes[steps["encoder.middle.1.to_qkv.weight"]] == (384, 1152)
  dif = {s.source: s.target for s in names.plan("diffusers", vae_config.get_config("wan21"))}
  assert dif["decoder.up_blocks.1.upsamplers.0.time_conv.weight"] == steps["decoder.upsamples.7.time_conv.weight"]
  assert dif["encoder.mid_block.attentions.0.proj.weight"] == steps["encoder.middle.1.proj.weight"]
  assert dif["decoder.up_blocks.3.resnets.2.conv2.weight"] == steps["decoder.upsamples.14.residual.6.weight"]
