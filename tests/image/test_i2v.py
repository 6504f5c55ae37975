"""I2V conditioning helpers vs direct transcriptions of `wan/image2video.py` (spec §1.14)."""

import math

import numpy as np
import pytest

from wanjax.errors import UsageError
from wanjax.image import i2v

ABS_TOL = 1e-5


def _reference_size(h, w, max_area, frame_num=81):
  """The reference's lines, transcribed (vae_stride (4, 8, 8), patch (1, 2, 2), sp_size 1)."""
  aspect_ratio = h / w
  lat_h = round(np.sqrt(max_area * aspect_ratio) // 8 // 2 * 2)
  lat_w = round(np.sqrt(max_area / aspect_ratio) // 8 // 2 * 2)
  max_seq_len = ((frame_num - 1) // 4 + 1) * lat_h * lat_w // (2 * 2)
  return lat_h, lat_w, lat_h * 8, lat_w * 8, int(math.ceil(max_seq_len / 1)) * 1


@pytest.mark.parametrize("h0,w0,area", [
    (480, 832, "480p"), (832, 480, "480p"), (720, 1280, "720p"), (1080, 1920, "480p"), (1000, 333, "480p"),
    (333, 1000, "720p"), (517, 517, "480p"), (768, 1366, 832 * 480)])
def test_latent_size_matches_reference_formula(h0, w0, area):
  max_area = i2v.MAX_AREA.get(area, area)
  lat_h, lat_w, h, w, seq = _reference_size(h0, w0, max_area)
  got = i2v.latent_size_for(h0, w0, area)
  assert tuple(got) == (lat_h, lat_w, h, w)
  assert i2v.seq_len_for(81, got.lat_h, got.lat_w) == seq


def test_latent_size_examples():
  # 720p: exact arithmetic, 90 x 160 latent.
  assert tuple(i2v.latent_size_for(720, 1280, "720p")) == (90, 160, 720, 1280)
  # Quirk: a 480x832 image at 480p gives sqrt(399360 * (480/832)) = 479.99999999999994 in float64, so the
  # reference's floor-divisions yield lat_h 58 (464 px), not 60 as §1.14's worked example says.
  assert tuple(i2v.latent_size_for(480, 832, "480p")) == (58, 104, 464, 832)
  # The §1.14 sequence-length rule on its 60 x 104 example.
  assert i2v.seq_len_for(81, 60, 104) == 32760
  assert i2v.seq_len_for(81, 60, 104, sp_size=7) == 32760 + (-32760 % 7)


def test_bad_inputs_raise():
  with pytest.raises(UsageError, match="4k\\+1"):
    i2v.seq_len_for(80, 60, 104)
  with pytest.raises(UsageError, match="480p"):
    i2v.latent_size_for(480, 832, "540p")
  with pytest.raises(UsageError, match="f_lat=20"):
    i2v.i2v_mask(20, 3, 5)


def _torch_mask(frames, lat_h, lat_w, last):
  import torch
  msk = torch.ones(1, frames, lat_h, lat_w)
  if last:
    msk[:, 1:-1] = 0
  else:
    msk[:, 1:] = 0
  msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
  msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
  return msk.transpose(1, 2)[0].numpy()  # [4, F_lat, h, w]


@pytest.mark.torch
@pytest.mark.parametrize("frames,last", [(81, False), (81, True), (13, False), (9, True)])
def test_mask_matches_reference(frames, last):
  f_lat = (frames - 1) // 4 + 1
  got = i2v.i2v_mask(f_lat, 3, 5, frames, last_frame=last)
  assert got.shape == (f_lat, 3, 5, 4)
  np.testing.assert_array_equal(got, _torch_mask(frames, 3, 5, last).transpose(1, 2, 3, 0))
  np.testing.assert_array_equal(got[0], 1.0)
  np.testing.assert_array_equal(got[1:-1], 0.0)
  np.testing.assert_array_equal(got[-1], np.broadcast_to([0, 0, 0, float(last)], got[-1].shape))


@pytest.mark.torch
@pytest.mark.parametrize("last", [False, True])
def test_condition_video(last):
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(1)
  img = rng.uniform(-1, 1, (37, 53, 3)).astype(np.float32)
  img2 = rng.uniform(-1, 1, (29, 61, 3)).astype(np.float32)
  h, w, t = 24, 40, 9
  vid = np.asarray(i2v.condition_video(img, h, w, t, last_image=img2 if last else None))
  assert vid.shape == (t, h, w, 3)

  def ref(a):  # reference: F.interpolate(img[None].cpu(), size=(h, w), mode='bicubic') on [1, 3, H0, W0]
    x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
    return F.interpolate(x, size=(h, w), mode="bicubic").numpy()[0].transpose(1, 2, 0)

  assert np.max(np.abs(vid[0] - ref(img))) <= ABS_TOL
  middle = vid[1:-1] if last else vid[1:]
  np.testing.assert_array_equal(middle, 0.0)
  if last:
    assert np.max(np.abs(vid[-1] - ref(img2))) <= ABS_TOL


def test_build_y_order_and_shape():
  rng = np.random.default_rng(2)
  mask = i2v.i2v_mask(3, 4, 6, 9)
  lat = rng.standard_normal((3, 4, 6, 16)).astype(np.float32)
  y = np.asarray(i2v.build_y(mask, lat))
  assert y.shape == (3, 4, 6, 20)
  np.testing.assert_array_equal(y[..., :4], mask)
  np.testing.assert_array_equal(y[..., 4:], lat)
  with pytest.raises(UsageError, match="agree"):
    i2v.build_y(mask, lat[:2])
