"""Analytic object detection in toy-world videos: palette unmixing, blobs, shape/size classes, tracks.

No reference counterpart (docs/toyworld.md §Score). Works on any `[T, H, W, 3]` video in [−1, 1] (or uint8):
1. crop the central min(H, W) square (the renderer's scene square) and take each frame's median colour as its
   background b (objects cover well under half of a frame);
2. unmix every pixel p against each object colour c as the renderer composites it, p = b + α·(c − b): α is the
   projection of p − b on c − b and the residual is the distance from p to the segment b→c. A pixel belongs to
   colour c when α ≥ 1/2 (at least half covered: the same outline for every contrast) and the residual is
   within `TAU` (washed-out or wrong colours, noise); the colour with the smallest residual wins. Pixels with
   `EDGE_ALPHA` < α < 1 − `EDGE_ALPHA` on a segment are edge pixels: their number per outline pixel is the
   edge width (≈ 1 pixel for the anti-aliased renders, several for blurred videos);
3. per object colour and frame, 8-connected components (scipy.ndimage, which jax already depends on); blobs
   smaller than `MIN_AREA` × a small object's area are dropped as specks;
4. per blob, from the soft coverage α in a window around it: area (Σα), centroid, and the shape whose
   anti-aliased template — the renderer's own signed distance at the blob's area and centroid — is closest in
   L1 (relative to the area); the size class by the area. Bounding-box `fill` (area / box area: square 1,
   circle π/4, diamond and triangle ½) and `asym` ((centroid y − box centre y) / box height: ⅙ for the upward
   triangle, 0 for the others) are kept as diagnostics;
5. a track per colour: the largest blob of that colour in each frame (colours are unique within a scene).
"""

import dataclasses
import math

import numpy as np

from wanjax.errors import UsageError
from wanjax.toyworld import world

OBJECT_COLOURS = tuple(world.COLOURS)
_PALETTE = np.asarray([world.COLOURS[c] for c in OBJECT_COLOURS], np.float32)  # [C, 3]
TAU = 0.5          # largest distance of a pixel from its colour's segment b→c (the closest colour pair is 1.25)
EDGE_ALPHA = 0.1   # coverage band (0.1, 0.9) counted as edge pixels
MIN_AREA = 0.3     # blobs below this fraction of a small object's area are specks
WINDOW_PAD = 2     # pixels around a blob's bounding box used for its soft coverage
# Size classes split at the geometric mean of the two class areas (fraction of the frame area).
SIZE_SPLIT = math.pi * world.SIZE_RADIUS["small"] * world.SIZE_RADIUS["large"]


@dataclasses.dataclass(frozen=True)
class Blob:
  frame: int
  colour: str
  area: float            # soft area Σα, fraction of the scene square's area
  x: float               # soft centroid, unit-square coordinates
  y: float
  fill: float            # diagnostics: hard-mask area / bounding-box area
  asym: float            # diagnostics: (centroid y − box centre y) / box height
  template_error: float  # L1 distance of the coverage from the best template, relative to the area
  edge_width: float      # edge pixels per outline pixel of this colour in this frame
  shape: str
  size: str


def as_video(video) -> np.ndarray:
  """Validates `[T, H, W, 3]` and returns float32 in [−1, 1] (uint8 input is mapped from [0, 255])."""
  v = np.asarray(video)
  if v.ndim != 4 or v.shape[-1] != 3:
    raise UsageError(f"video has shape {v.shape}; expected [T, H, W, 3] (channels last)")
  if v.shape[0] < 2 or min(v.shape[1:3]) < 16:
    raise UsageError(f"video has shape {v.shape}; need at least 2 frames of at least 16x16 pixels")
  if v.dtype == np.uint8:
    return v.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(v.dtype, np.floating):
    raise UsageError(f"video dtype {v.dtype} is not supported; give float in [-1, 1] or uint8")
  v = v.astype(np.float32)
  if not np.all(np.isfinite(v)):
    raise UsageError("video contains NaN or infinite values")
  return v


def crop_square(video: np.ndarray) -> np.ndarray:
  """The central min(H, W) square, where the renderer places the scene."""
  _, h, w, _ = video.shape
  ox, oy, side = world.frame_square(h, w)
  ox, oy, side = int(ox), int(oy), int(side)
  return video[:, oy:oy + side, ox:ox + side]


@dataclasses.dataclass(frozen=True)
class Segmentation:
  labels: np.ndarray       # [T, S, S] int8: index into OBJECT_COLOURS, −1 for background / unclassified
  background: np.ndarray   # [T, 3] per-frame median colour
  edge_pixels: np.ndarray  # [T, C] pixels per frame and colour with a partial coverage
  alpha: np.ndarray        # [T, S, S, C] coverage α in [0, 1] where the pixel is on the segment b→c, else 0


def segment(video: np.ndarray) -> Segmentation:
  """Unmixes every pixel against every object colour over the frame's median background (module docstring)."""
  t = video.shape[0]
  bg = np.median(video.reshape(t, -1, 3), axis=1).astype(np.float32)  # [T, 3]
  p = video.reshape(t, -1, 3) - bg[:, None, :]                         # [T, P, 3]
  d = _PALETTE[None, :, :] - bg[:, None, :]                            # [T, C, 3]
  dd = np.maximum(np.sum(d * d, axis=-1), 1e-6)                        # [T, C]
  alpha = np.matmul(p, d.transpose(0, 2, 1)) / dd[:, None, :]        # [T, P, C]
  a = np.clip(alpha, 0.0, 1.0)
  # |p − a·d|² expanded: |p|² − 2a(p·d) + a²|d|², with p·d = alpha·|d|².
  pp = np.matmul(p * p, np.ones((3, 1), np.float32))                   # [T, P, 1]
  res2 = pp + (a * a - 2.0 * a * alpha) * dd[:, None, :]
  on_segment = res2 <= TAU ** 2
  valid = on_segment & (alpha >= 0.5)
  best = np.argmin(np.where(valid, res2, np.inf), axis=-1)
  labels = np.where(np.any(valid, axis=-1), best, -1).astype(np.int8)
  edge = on_segment & (alpha > EDGE_ALPHA) & (alpha < 1.0 - EDGE_ALPHA)
  alpha = np.where(on_segment, a, 0.0).astype(np.float32).reshape(video.shape[:3] + (len(_PALETTE),))
  return Segmentation(labels=labels.reshape(video.shape[:3]), background=bg,
                      edge_pixels=np.sum(edge, axis=1), alpha=alpha)


def match_shape(alpha: np.ndarray, x0: int, y0: int) -> tuple:
  """(shape, relative L1 error, area px, cx, cy) of a soft coverage window whose top-left pixel is (x0, y0)."""
  area = float(alpha.sum())
  gy, gx = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]] + 0.5
  cx, cy = float((alpha * gx).sum() / area), float((alpha * gy).sum() / area)
  r = math.sqrt(area / math.pi)
  errors = {}
  for shape, (ex, ey) in world.HALF_EXTENT.items():
    hx, hy = ex * r, ey * r
    # The template is placed by its centroid; a triangle's box centre sits a third of hy above it.
    by = cy - hy / 3.0 if shape == "triangle" else cy
    template = np.clip(0.5 - world.signed_distance(shape, gx - cx, gy - by, hx, hy), 0.0, 1.0)
    errors[shape] = float(np.abs(alpha - template).sum() / area)
  shape = min(errors, key=errors.get)
  return shape, errors[shape], area, cx + x0, cy + y0


def size_class(area: float) -> str:
  return "small" if area < SIZE_SPLIT else "large"


def find_blobs(seg: Segmentation) -> list:
  """All blobs of object colours in a segmented `[T, S, S]` video, as `Blob`s, sorted by (frame, −area)."""
  from scipy import ndimage
  labels = seg.labels
  t, side, _ = labels.shape
  min_px = MIN_AREA * math.pi * (world.SIZE_RADIUS["small"] * side) ** 2
  # 8-connected within a frame, never across frames; outlines use 4-neighbours.
  structure = np.zeros((3, 3, 3), bool)
  structure[1] = True
  cross = np.zeros((3, 3, 3), bool)
  cross[1, 1, :] = cross[1, :, 1] = True
  blobs = []
  for ci, colour in enumerate(OBJECT_COLOURS):
    mask = labels == ci
    comp, n = ndimage.label(mask, structure=structure)
    if n == 0:
      continue
    outline = np.sum(mask & ~ndimage.binary_erosion(mask, structure=cross), axis=(1, 2))  # [T]
    edge_width = seg.edge_pixels[:, ci] / np.maximum(outline, 1)
    flat = comp.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    keep = np.flatnonzero(area >= min_px)
    if keep.size == 0:
      continue
    slices = ndimage.find_objects(comp)
    for k in keep:
      sl = slices[k]
      f = int(sl[0].start)
      y0, y1, x0, x1 = sl[1].start, sl[1].stop, sl[2].start, sl[2].stop
      box = comp[f, y0:y1, x0:x1] == k + 1
      rows = np.nonzero(box)[0] + 0.5
      fill = area[k] / box.size
      asym = (rows.mean() - 0.5 * box.shape[0]) / box.shape[0]
      ya, yb = max(y0 - WINDOW_PAD, 0), min(y1 + WINDOW_PAD, side)
      xa, xb = max(x0 - WINDOW_PAD, 0), min(x1 + WINDOW_PAD, side)
      # Soft coverage of this blob only: other blobs of the colour in the window are masked out.
      own = np.isin(comp[f, ya:yb, xa:xb], (0, k + 1))
      shape, err, soft_area, cx, cy = match_shape(seg.alpha[f, ya:yb, xa:xb, ci] * own, xa, ya)
      a = soft_area / side ** 2
      blobs.append(Blob(frame=f, colour=colour, area=a, x=cx / side, y=cy / side, fill=float(fill),
                        asym=float(asym), template_error=err, edge_width=float(edge_width[f]), shape=shape,
                        size=size_class(a)))
  blobs.sort(key=lambda b: (b.frame, -b.area))
  return blobs


def tracks(blobs: list, frames: int) -> dict:
  """colour → list of length T holding the largest blob of that colour per frame (or None)."""
  out = {}
  for b in blobs:
    row = out.setdefault(b.colour, [None] * frames)
    if row[b.frame] is None or b.area > row[b.frame].area:
      row[b.frame] = b
  return out


def detect(video) -> tuple:
  """(segmentation, blobs, tracks) of a video: see the module docstring."""
  v = crop_square(as_video(video))
  seg = segment(v)
  blobs = find_blobs(seg)
  return seg, blobs, tracks(blobs, v.shape[0])
