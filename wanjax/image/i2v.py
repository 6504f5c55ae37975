"""I2V / FLF2V conditioning tensors: latent size from `max_area`, the 4-channel mask, the condition video, `y`.

Mirrors the reference `wan/image2video.py` (`WanI2V.generate`) and `wan/first_last_frame2video.py`
(spec `wan_model.md` §1.14, pitfall 8), channels-last: where the reference builds `[C, F, H, W]` tensors,
these return `[F, H, W, C]`. The VAE encode of the condition video is `wanjax.vae`'s job; `build_y` joins its
normalised latent with the mask. Host-side NumPy except the resize (`bicubic_resize`, torch-equal).
"""

import collections

import jax.numpy as jnp
import numpy as np

from wanjax.errors import UsageError
from wanjax.image.resize import bicubic_resize

# `max_area` of the released I2V resolutions (`wan/configs` SIZE_CONFIGS / MAX_AREA_CONFIGS).
MAX_AREA = {"480p": 832 * 480, "720p": 1280 * 720}

VAE_STRIDE = (4, 8, 8)   # (t, h, w)
PATCH_SIZE = (1, 2, 2)

LatentSize = collections.namedtuple("LatentSize", ["lat_h", "lat_w", "height", "width"])


def latent_size_for(h0, w0, max_area) -> LatentSize:
  """Latent and pixel size for an `h0 × w0` image at `max_area` pixels (aspect kept, multiple of 16 pixels).

  Quirk (§1.14): float floor-divisions of the NumPy float64 square root, then `round`, exactly as the reference.
  """
  if isinstance(max_area, str):
    if max_area not in MAX_AREA:
      raise UsageError(f"unknown max_area {max_area!r}; valid: {', '.join(MAX_AREA)} or a pixel count")
    max_area = MAX_AREA[max_area]
  if h0 < 1 or w0 < 1 or max_area < 1:
    raise UsageError(f"image size {h0}x{w0} and max_area={max_area} must all be positive")
  aspect_ratio = h0 / w0
  lat_h = round(np.sqrt(max_area * aspect_ratio) // VAE_STRIDE[1] // PATCH_SIZE[1] * PATCH_SIZE[1])
  lat_w = round(np.sqrt(max_area / aspect_ratio) // VAE_STRIDE[2] // PATCH_SIZE[2] * PATCH_SIZE[2])
  if lat_h < 1 or lat_w < 1:
    raise UsageError(f"image {h0}x{w0} at max_area={max_area} gives an empty latent ({lat_h}x{lat_w}); "
                     f"the aspect ratio is too extreme")
  return LatentSize(int(lat_h), int(lat_w), int(lat_h) * VAE_STRIDE[1], int(lat_w) * VAE_STRIDE[2])


def num_latent_frames(num_frames: int) -> int:
  """`(F − 1) // 4 + 1` for `F = 4k + 1` pixel frames."""
  if num_frames < 1 or (num_frames - 1) % VAE_STRIDE[0]:
    raise UsageError(f"num_frames={num_frames} must be 4k+1 (e.g. 77 or 81)")
  return (num_frames - 1) // VAE_STRIDE[0] + 1


def seq_len_for(num_frames: int, lat_h: int, lat_w: int, *, sp_size: int = 1) -> int:
  """The DiT sequence length `max_seq_len` (rounded up to a multiple of the sequence-parallel size)."""
  seq = num_latent_frames(num_frames) * lat_h * lat_w // (PATCH_SIZE[1] * PATCH_SIZE[2])
  return int(-(-seq // sp_size) * sp_size)


def i2v_mask(f_lat: int, lat_h: int, lat_w: int, frames: int = 81, *, last_frame: bool = False) -> np.ndarray:
  """`[F_lat, lat_h, lat_w, 4]` float32 mask: all 4 channels 1 at latent frame 0, 0 elsewhere.

  `last_frame` (FLF2V): pixel frame `frames − 1` is also kept, so the last latent frame gets [0, 0, 0, 1].
  Built the reference's way: per-pixel-frame mask, frame 0 repeated 4×, viewed as `[F_lat, 4, ...]`.
  """
  if f_lat != num_latent_frames(frames):
    raise UsageError(f"f_lat={f_lat} does not match frames={frames}; expected {num_latent_frames(frames)}")
  msk = np.ones((frames, lat_h, lat_w), np.float32)
  msk[1:-1 if last_frame else None] = 0
  msk = np.concatenate([np.repeat(msk[0:1], 4, axis=0), msk[1:]], axis=0)  # [frames + 3, h, w]
  msk = msk.reshape(f_lat, 4, lat_h, lat_w)
  return np.ascontiguousarray(msk.transpose(0, 2, 3, 1))


def _check_image(name, image):
  image = jnp.asarray(image, jnp.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise UsageError(f"{name} must be an [H, W, 3] image in [-1, 1], got shape {tuple(image.shape)}")
  return image


def condition_video(image, h: int, w: int, num_frames: int, *, last_image=None):
  """The VAE input `[T, h, w, 3]`: `image [H0, W0, 3]` in [-1, 1] bicubic-resized to `(h, w)` as frame 0,
  zeros (mid-grey) after; FLF2V: `last_image` resized the same way as frame `T − 1`.

  The reference's FLF2V pre-fit of a differently sized last frame to the first one (PIL resize + centre crop)
  is the caller's job; here each image is resized straight to `(h, w)` as its `F.interpolate` call does.
  """
  num_latent_frames(num_frames)  # validates 4k+1
  if last_image is not None and num_frames < 5:
    raise UsageError(f"FLF2V needs num_frames >= 5 (4k+1), got {num_frames}")
  first = bicubic_resize(_check_image("image", image), (h, w))  # [h, w, 3]
  frames = [first[None], jnp.zeros((num_frames - 1 - (last_image is not None), h, w, 3), jnp.float32)]
  if last_image is not None:
    frames.append(bicubic_resize(_check_image("last_image", last_image), (h, w))[None])
  return jnp.concatenate(frames, axis=0)


def build_y(mask, cond_latent):
  """`y = [mask (4) | cond latent (16)]` along the channel (last) axis -> `[..., F_lat, lat_h, lat_w, 20]`."""
  if mask.shape[-1] != 4:
    raise UsageError(f"mask must have 4 channels (last axis), got shape {tuple(mask.shape)}")
  if tuple(mask.shape[:-1]) != tuple(cond_latent.shape[:-1]):
    raise UsageError(f"mask {tuple(mask.shape)} and condition latent {tuple(cond_latent.shape)} must agree on "
                     f"every axis but the channels")
  return jnp.concatenate([jnp.asarray(mask, cond_latent.dtype), jnp.asarray(cond_latent)], axis=-1)
