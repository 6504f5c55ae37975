"""bicubic_resize vs torch F.interpolate(mode='bicubic', align_corners=False) (spec §1.14, §5.3, pitfall 12)."""

import jax
import numpy as np
import pytest

from wanjax.image.resize import bicubic_resize, resize_matrix

ABS_TOL = 1e-5  # task tolerance (max abs error, inputs of unit scale)

CASES = [
    ((7, 9), (16, 20)),       # upsample, odd sizes
    ((3, 4), (7, 5)),         # tiny, mixed up/down-ish
    ((30, 41), (13, 8)),      # downsample, non-square
    ((11, 6), (11, 6)),       # same size (identity)
    ((5, 5), (224, 224)),     # large upsample (CLIP from a thumbnail)
    ((480, 832), (224, 224)),  # the CLIP squash from a 480p frame (float32 coordinate rounding matters)
    ((193, 257), (464, 832)),  # I2V conditioning upsample to a 480p latent-aligned size
]


def _torch_resize(x, size):
  import torch
  import torch.nn.functional as F
  t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  return F.interpolate(t, size=size, mode="bicubic", align_corners=False).numpy().transpose(0, 2, 3, 1)


@pytest.mark.torch
@pytest.mark.parametrize("src,dst", CASES)
def test_matches_torch_bicubic(src, dst):
  rng = np.random.default_rng(sum(src) + sum(dst))
  x = rng.uniform(-1, 1, size=(2, *src, 3)).astype(np.float32)
  ref = _torch_resize(x, dst)
  out = np.asarray(jax.jit(lambda a: bicubic_resize(a, dst))(x))
  assert out.shape == ref.shape
  assert np.max(np.abs(out - ref)) <= ABS_TOL


@pytest.mark.torch
def test_leading_axes_and_no_output_clamp():
  # A step edge overshoots (A = -0.75 rings); torch does not clamp, neither may we. Extra leading axes work.
  x = np.zeros((1, 1, 6, 6, 1), np.float32)
  x[..., 3:, :, :] = 1.0
  ref = _torch_resize(x[0], (17, 11))
  out = np.asarray(bicubic_resize(x, (17, 11)))[0]
  assert ref.max() > 1.0 and ref.min() < 0.0
  assert np.max(np.abs(out - ref)) <= ABS_TOL


def test_rows_sum_to_one_and_differ_from_jax_image_resize():
  m = resize_matrix(13, 5)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)  # border clamping keeps partition of unity
  x = np.random.default_rng(0).standard_normal((13, 9, 1)).astype(np.float32)
  ours = np.asarray(bicubic_resize(x, (5, 9)))
  theirs = np.asarray(jax.image.resize(x, (5, 9, 1), method="cubic"))
  assert np.max(np.abs(ours - theirs)) > 1e-2  # jax's Keys a=-0.5 + antialias is a different filter
