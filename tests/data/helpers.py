"""Shared pieces of the preprocessing tests: a folder of generated clips, the config, independent references.

The references prepare a clip without `train.preprocess`: the mp4 decoded by `wanjax.video.read_video`, frames
picked by exact rational timestamps, the centre crop computed here, and PIL's antialiased bicubic resize.
"""

import fractions
import os
import shutil

import jax
import numpy as np
from PIL import Image

from configs.data import toyworld
from wanjax import sharding as shd
from wanjax.toyworld.dataset import write_dataset
from wanjax.video import read_video, write_video

RESIZE_TOL = 1e-5      # abs, float32 matmuls vs PIL's float64 filter (measured 2.3e-6 with a fractional box)
LATENT_TOL = 1e-5      # stored vs reference latent, max|d|/max|ref| (same program; the resize differs: measured 4e-7)
DECODE_TOL = 2e-5      # decode(stored) vs decode(reference latent) (measured 2.3e-6)
BF16_TOL = 1e-2        # bf16 storage: relative rounding <= 2^-8 per element (measured 2.6e-3)
TEXT_TOL = 1e-5        # CLI on 2 devices vs in-process on 8: other reduction layouts (measured 1.2e-6)
N_TOY = 5              # 64x64 toy clips, 17 frames at 16 fps
SIZES = ("32*32", "48*32")


def smooth_clip(t, h, w, seed):
  """uint8 [t, h, w, 3] moving colour gradients (compress well, so H.264 keeps them)."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  ph = np.random.default_rng(seed).uniform(0, 6, 3)
  frames = [np.stack([np.sin(xx / (7 + 3 * c) + yy / 11 + 0.4 * i + ph[c]) for c in range(3)], -1)
            for i in range(t)]
  return np.asarray((np.stack(frames) * 0.45 + 0.5) * 255, np.uint8)


def caption(path, text):
  with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
    f.write(text)


def make_dataset(root):
  """Toy clips plus wide (cropped), panorama, too-short, corrupt and caption-less files under `root`."""
  toy = write_dataset(root, N_TOY, seed=3, frames=17, size=64)
  wide = write_video(os.path.join(root, "wide.mp4"), smooth_clip(17, 56, 96, 1))    # w/h 1.71 -> 48*32, cropped
  caption(wide, "a large red square moves left slowly on a gray background")
  pano = write_video(os.path.join(root, "pano.mp4"), smooth_clip(17, 32, 128, 2))   # w/h 4: no bucket near
  caption(pano, "a small blue circle moves up quickly on a black background")
  short = write_video(os.path.join(root, "short.mp4"), smooth_clip(3, 64, 64, 3))   # 3 frames < 17 needed
  caption(short, "a small green diamond moves down slowly on a gray background")
  with open(os.path.join(root, "corrupt.mp4"), "wb") as f:
    f.write(np.random.default_rng(4).bytes(4096))
  caption(os.path.join(root, "corrupt.mp4"), "a large white triangle moves right quickly on a brown background")
  shutil.copy(toy[0], os.path.join(root, "nocaption.mp4"))
  return {"root": str(root), "toy": toy, "wide": wide}


def config(**kw):
  """The toy-world preprocessing config with two aspect buckets; keyword overrides."""
  c = toyworld.get_config(kw.pop("arg", None))
  c.sizes = SIZES
  for k, v in kw.items():
    c[k] = v
  return c


def ref_indices(num_frames, fps, src_fps):
  """Index of the source frame on screen at time i/fps: the largest k with k/src_fps <= i/fps (exact)."""
  f, s = fractions.Fraction(fps), fractions.Fraction(src_fps)
  return [int(fractions.Fraction(i) / f * s) for i in range(num_frames)]


def ref_resize(frames_u8, h, w):
  """Centre crop to the aspect of h×w, PIL antialiased bicubic on float channels, clamp to [−1, 1]."""
  h0, w0 = frames_u8.shape[1:3]
  if w0 / h0 > w / h:
    cw = h0 * w / h
    box = ((w0 - cw) / 2, 0, (w0 + cw) / 2, h0)
  else:
    ch = w0 * h / w
    box = (0, (h0 - ch) / 2, w0, (h0 + ch) / 2)
  x = frames_u8.astype(np.float32) / 127.5 - 1.0
  out = np.stack([np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(fr[..., k])).resize(
      (w, h), Image.BICUBIC, box=box)) for k in range(3)], -1) for fr in x])
  return np.clip(out, -1.0, 1.0)


def ref_video(path, c, h, w):
  frames, src_fps = read_video(path)
  return ref_resize(frames[ref_indices(c.frames, c.fps, src_fps)], h, w)


def batch_sharded(x, mesh):
  return jax.device_put(x, jax.sharding.NamedSharding(mesh, shd.spec_for(("batch",) + (None,) * (x.ndim - 1),
                                                                         x.shape, mesh)))
