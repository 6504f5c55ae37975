"""`infer.sample` image-to-video on the tiny random I2V setup (`configs/sample/tiny.py:i2v`: DiT `tiny_i2v`, CLIP
`tiny_i2v` with 257 tokens of width 18, tiny VAE): the mp4's size follows the image aspect at the `size` area
(`latent_size_for`), the conditioning holds the spec's 4-channel mask, and both CFG branches see the same
`clip_fea` and `y` (spec `wan_model.md` §1.14)."""

import json
import os

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.sample import tiny
from infer import sample as S
from wanjax import sampling, sharding, video
from wanjax.image import i2v

H0, W0 = 40, 72        # a wide input image: 48*32 area -> 48x16 video
AREA = "48*32"


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
  d = tmp_path_factory.mktemp("i2v")
  y, x = np.mgrid[:H0, :W0]
  img = np.stack([x * 255 // (W0 - 1), y * 255 // (H0 - 1), (x + y) % 256], -1).astype(np.uint8)  # a ramp
  iio.imwrite(d / "x.png", img)
  return d / "x.png"


def _config(image_path, out_dir, name):
  c = tiny.get_config("steps=2,i2v")
  c.size, c.image, c.output_dir, c.output_name = AREA, str(image_path), str(out_dir), name
  return c


def test_i2v_end_to_end_mp4(image_path, tmp_path):
  want = i2v.latent_size_for(H0, W0, 48 * 32)
  assert (want.height, want.width) == (16, 48)   # the aspect decides, not the 48x32 of `size`
  c = _config(image_path, tmp_path, "clip")
  c.save_latents = str(tmp_path / "lat.npy")
  side = S.run(c)
  frames, fps = video.read_video(tmp_path / "clip.mp4")
  assert frames.shape == (5, want.height, want.width, 3) and fps == 16.0
  assert frames.std() > 1.0, "decoded video should not be constant"
  meta = json.loads((tmp_path / "clip.json").read_text())
  assert (meta["model_type"], meta["width"], meta["height"], meta["frames"]) == ("i2v", 48, 16, 5)
  assert meta["cfg"] is True and side["latent_shape"] == [1, 2, want.lat_h, want.lat_w, 16]
  lat = np.load(tmp_path / "lat.npy")
  assert lat.shape == (1, 16, 2, want.lat_h, want.lat_w) and np.isfinite(lat).all()
  assert oct(os.stat(tmp_path / "clip.mp4").st_mode & 0o777) == oct(0o666 & ~_umask())


def test_conditioning_mask_and_latent(image_path, tmp_path):
  """y = [mask 4 | VAE latent of (image, 4 grey frames) 16]: mask all ones at latent frame 0, zeros after."""
  c = _config(image_path, tmp_path, "cond")
  plan = S.check(c)
  mesh = sharding.make_mesh(c.mesh)
  vae = S.build_vae(c, mesh)
  clip_fea, y = S.i2v_condition(c, plan, vae, mesh)
  assert clip_fea.shape == (1, 257, 18) and np.isfinite(np.asarray(clip_fea)).all()
  y = np.asarray(y)
  assert y.shape == (1, 2, 2, 6, 20)
  np.testing.assert_array_equal(y[0, 0, ..., :4], 1.0)
  np.testing.assert_array_equal(y[0, 1:, ..., :4], 0.0)
  cond_video = i2v.condition_video(plan.image, 16, 48, 5)
  assert np.asarray(cond_video[1:]).max() == 0.0          # frames after the first are zero (mid-grey)
  np.testing.assert_allclose(y[..., 4:], np.asarray(vae.encode(cond_video[None])), rtol=0, atol=1e-6)
  assert np.abs(y[0, 0, ..., 4:] - y[0, 1, ..., 4:]).max() > 1e-3   # the image shows in latent frame 0


def test_both_cfg_branches_get_the_same_image_conditioning():
  rng = np.random.default_rng(0)
  ctx, neg = rng.standard_normal((2, 1, 7, 20)).astype(np.float32)
  clip_fea = rng.standard_normal((1, 257, 18)).astype(np.float32)
  y = rng.standard_normal((1, 2, 4, 6, 20)).astype(np.float32)
  cond, uncond = S.conditions(ctx, neg, 5.0, {"clip_fea": clip_fea, "y": y})
  assert set(cond) == {"context", "clip_fea", "y"} and set(uncond) == {"context"}
  assert S.conditions(ctx, neg, 1.0, {"clip_fea": clip_fea, "y": y})[1] is None   # cfg_scale 1: no branch

  seen = []

  def denoise(params, x, t, c):
    jax.debug.callback(lambda *a: seen.append([np.asarray(v) for v in a]), c["context"], c["clip_fea"], c["y"])
    return jnp.zeros_like(x)

  sampling.sample(denoise, jnp.zeros((1, 2, 4, 6, 16)), sigmas=np.array([1.0, 0.5, 0.0], np.float32),
                  timesteps=np.array([1000.0, 500.0], np.float32), solver="euler", cfg_scale=5.0, cond=cond,
                  uncond=uncond)
  assert len(seen) == 2
  for got_ctx, got_clip, got_y in seen:   # the batch of two: [cond, uncond]
    np.testing.assert_array_equal(got_ctx, np.concatenate([ctx, neg]))
    np.testing.assert_array_equal(got_clip, np.concatenate([clip_fea, clip_fea]))
    np.testing.assert_array_equal(got_y, np.concatenate([y, y]))


def _umask():
  mask = os.umask(0o022)
  os.umask(mask)
  return mask
