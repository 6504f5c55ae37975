r"""Input clips for `train.preprocess`: listing a folder / csv / json / prompts file, reading videos and
lossless `.npy` clips, aspect buckets, centre crops, antialiased bicubic resizing (as PIL) and frame sampling.

Mirrors the clip handling of distill_wan2.1 `scripts/data_preprocess/resize_videos.py` (spec
`post_training.md` A.1), generalised to raw clips of any size; a clip that cannot be used raises `Skip`
with the reason that `skipped.json` records.
"""

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from wanjax.errors import UsageError
from wanjax.fileio import file_sha256

VIDEO_EXTS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi", ".m4v", ".npy")
VIDEO_COLUMNS = ("video", "path", "file", "filename")
CAPTION_COLUMNS = ("caption", "prompt", "text")
NPY_RANGE_TOL = 1e-3  # float .npy clips may overshoot [−1, 1] by rounding; more means another value range


class Skip(Exception):
  """A clip that cannot be used; the message is the reason recorded in skipped.json."""


@dataclasses.dataclass
class Item:
  source: str     # video path ('' for a prompt-only row)
  caption: str
  origin: str     # where the row came from, for messages: the path, or 'prompts.txt:12'
  id: str = ""



# ------------------------------------------------------------------------------------------------ fingerprints
# Decision (issue: edited clips kept stale latents): each cached clip stores {size, mtime_ns, sha256} of its
# file. A re-run compares size + mtime_ns first (a stat: what make and rsync trust), and only when the mtime
# alone differs (touched, copied with `cp -r`, checked out again) hashes the file to tell an unchanged file from
# an edit of the same size. The hash costs one extra read of a clip when it is encoded; a re-run of unchanged
# clips reads nothing. Records without a fingerprint (folders cached before it existed) are trusted as they are
# and fingerprinted at the next run (one read each), so later edits and touches are told apart as for new ones.

def fingerprint(path, *, digest=True) -> dict:
  """{size, mtime_ns, sha256} of a file (sha256 None without `digest`)."""
  st = os.stat(path)
  return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": file_sha256(path) if digest else None}


def compare_file(fp, path):
  """('same' | 'changed' | 'missing', refreshed fingerprint or None) for the file `path` against a stored
  fingerprint `fp`; the refreshed one is returned when the content is the same but the stored stat is not."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return "missing", None
  if fp is None:   # a record of an older folder: trusted as it is, and fingerprinted now (one read)
    return "same", fingerprint(path)
  if st.st_size != fp["size"]:
    return "changed", None
  if st.st_mtime_ns == fp["mtime_ns"]:
    return "same", None
  try:
    if fp.get("sha256") and file_sha256(path) == fp["sha256"]:
      return "same", dict(fp, mtime_ns=int(st.st_mtime_ns))
  except OSError:   # unreadable now: encoding it again records why (skipped.json)
    pass
  return "changed", None


# ------------------------------------------------------------------------------------------------ inputs

def input_root(path):
  """The folder relative to which `--input`'s clips are named: the folder itself, or an index file's folder."""
  path = os.path.abspath(os.path.expanduser(path))
  return path if os.path.isdir(path) else os.path.dirname(path)


def same_place(old_source, source, root) -> bool:
  """Whether `old_source` ends with `source`'s path relative to `root` (its basename when outside `root`):
  the clip sits at the same place in a clips folder that was moved or copied."""
  rel = os.path.relpath(source, root)
  if rel.startswith(os.pardir + os.sep) or rel == os.pardir:
    rel = os.path.basename(source)
  return old_source == source or old_source.endswith(os.sep + rel)


def _resolve(base, p):
  p = os.path.expanduser(str(p).strip())
  return os.path.abspath(p if os.path.isabs(p) else os.path.join(base, p))


def _pick(row: dict, names, what, where):
  for n in names:
    if n in row and row[n] is not None:
      return str(row[n])
  raise UsageError(f"{where}: no {what} column/key; expected one of {', '.join(names)} (found "
                   f"{', '.join(sorted(row)) or 'none'})")


def read_text(path, *, newline=None):
  """The text of a UTF-8 file, a leading byte-order mark dropped (Windows editors and Excel write one);
  `UsageError` naming the file and the first bad byte otherwise."""
  try:
    with open(path, encoding="utf-8-sig", newline=newline) as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise UsageError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as "
                     f"UTF-8") from None


def _json_rows(path, text, jsonl):
  def parse(s, line0):
    try:
      return json.loads(s)
    except json.JSONDecodeError as e:
      raise UsageError(f"{path}:{line0 + e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
  if jsonl:
    return [parse(line, n) for n, line in enumerate(text.split("\n")) if line.strip()]
  rows = parse(text, 0)
  if isinstance(rows, dict):
    return [{"video": k, "caption": v} for k, v in rows.items()]
  if not isinstance(rows, list):
    raise UsageError(f"{path}: expected a list of objects with video and caption keys, or one {{video: caption}} "
                     f"object; got {type(rows).__name__}")
  return rows


def list_inputs(path):
  """(items, skips): one Item per video or prompt; skips are (origin, reason) for rows without a caption."""
  path = os.path.expanduser(path)
  if not path or not os.path.exists(path):
    raise UsageError(f"--input {path!r} does not exist; give a folder of videos, a .csv/.json/.jsonl index or "
                     f"a .txt of prompts")
  items, skips = [], []
  if os.path.isdir(path):
    for root, _, files in sorted(os.walk(path)):
      if any(p.startswith(".") for p in os.path.relpath(root, path).split(os.sep) if p != "."):
        continue
      for f in sorted(files):
        # Dot-files are hidden, e.g. the temp file of a clip whose writer was killed (`wanjax.fileio`).
        if not f.lower().endswith(VIDEO_EXTS) or f.startswith("."):
          continue
        video = os.path.abspath(os.path.join(root, f))
        side = os.path.splitext(video)[0] + ".txt"
        caption = ""
        if os.path.exists(side):
          try:
            caption = read_text(side).strip()
          except UsageError as e:
            skips.append((video, f"unreadable caption: {e}"))
            continue
        if caption:
          items.append(Item(video, caption, video))
        else:
          skips.append((video, f"no caption (expected a non-empty sidecar {os.path.basename(side)})"))
    if not items and not skips:
      raise UsageError(f"--input {path}: no videos ({', '.join(VIDEO_EXTS)}) found")
    return items, skips
  base = os.path.dirname(os.path.abspath(path))
  ext = os.path.splitext(path)[1].lower()
  if ext == ".txt":
    for n, line in enumerate(read_text(path).split("\n"), 1):
      if line.strip():
        items.append(Item("", line.strip(), f"{path}:{n}"))
  elif ext == ".csv":
    reader = csv.DictReader(io.StringIO(read_text(path, newline=""), newline=""))
    for row in reader:
      where = f"{path}:{reader.line_num}"
      items.append(Item(_resolve(base, _pick(row, VIDEO_COLUMNS, "video", where)),
                        _pick(row, CAPTION_COLUMNS, "caption", where).strip(), where))
  elif ext in (".json", ".jsonl"):
    rows = _json_rows(path, read_text(path), ext == ".jsonl")
    for n, row in enumerate(rows):
      where = f"{path}[{n}]"
      if not isinstance(row, dict):
        raise UsageError(f"{where}: expected an object with video and caption keys, got {type(row).__name__}")
      items.append(Item(_resolve(base, _pick(row, VIDEO_COLUMNS, "video", where)),
                        _pick(row, CAPTION_COLUMNS, "caption", where).strip(), where))
  elif ext in VIDEO_EXTS:
    raise UsageError(f"--input {path} is a single clip; give the folder holding it (its caption in "
                     f"{os.path.splitext(os.path.basename(path))[0]}.txt beside it) or a .csv/.json index")
  else:
    raise UsageError(f"--input {path}: unknown index type {ext!r}; valid: a folder, .csv, .json, .jsonl, .txt")
  kept = []
  for it in items:
    if not it.caption:
      skips.append((it.origin, "empty caption"))
    else:
      kept.append(it)
  if not kept and not skips:
    raise UsageError(f"--input {path} lists no clips or prompts")
  return kept, skips


# ------------------------------------------------------------------------------------------------ geometry

def parse_size(s):
  """'832*480' (W*H, as the sampling configs) -> (h, w)."""
  try:
    w, h = (int(v) for v in str(s).lower().replace("x", "*").split("*"))
  except ValueError:
    raise UsageError(f"size {s!r} must be W*H, e.g. 832*480") from None
  if h % 16 or w % 16 or h < 16 or w < 16:
    raise UsageError(f"size {s!r}: width and height must be positive multiples of 16 (e.g. 832*480)")
  return h, w


def pick_bucket(h0, w0, sizes, max_aspect_change):
  """The (h, w) of `sizes` whose aspect is nearest to h0×w0 (in log ratio); Skip if it differs by more than
  `max_aspect_change` (relative), since the centre crop would cut that much of the frame."""
  ar = w0 / h0
  dist = [abs(math.log(ar * h / w)) for h, w in sizes]
  best = int(np.argmin(dist))
  if dist[best] > math.log1p(max_aspect_change):
    h, w = sizes[best]
    raise Skip(f"wrong aspect: {w0}x{h0} (w/h {ar:.3f}) is more than {max_aspect_change:.0%} from every "
               f"bucket (nearest {w}x{h}, w/h {w / h:.3f})")
  return sizes[best]


def crop_box(h0, w0, h, w):
  """Centre crop of an h0×w0 frame to the aspect of h×w: (top, left, height, width), fractional."""
  if w0 * h > h0 * w:   # wider than the target: crop the width
    cw = h0 * w / h
    return 0.0, (w0 - cw) / 2, float(h0), cw
  ch = w0 * h / w
  return (h0 - ch) / 2, 0.0, ch, float(w0)


def _bicubic(x, a=-0.5):
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def resize_matrix(in_size, out_size, start=0.0, length=None):
  """`[out, in]` float32 matrix resampling the span [start, start + length) of an axis to `out_size` samples.

  Antialiased bicubic (a = −0.5, support widened by the downscale factor, taps clipped to the image and weights
  renormalised), the filter of PIL's `Image.resize(BICUBIC, box=...)`: unlike the torch resize used for I2V
  conditioning, shrinking 1080p frames to 480p must not alias.
  """
  length = in_size - start if length is None else length
  scale = length / out_size
  fscale = max(scale, 1.0)
  support = 2.0 * fscale
  centre = start + (np.arange(out_size) + 0.5) * scale                     # [out]
  lo = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
  hi = np.minimum(np.trunc(centre + support + 0.5), in_size).astype(np.int64)
  x = np.arange(in_size)[None, :]
  w = _bicubic((x - centre[:, None] + 0.5) / fscale)
  w = np.where((x >= lo[:, None]) & (x < hi[:, None]), w, 0.0)
  w /= np.where(w.sum(1, keepdims=True) == 0, 1.0, w.sum(1, keepdims=True))
  return w.astype(np.float32)


@jax.jit
def _resize(frames, mh, mw):
  """uint8 `[T, H, W, 3]` -> float32 `[T, h, w, 3]` in [−1, 1] (crop folded into the matrices)."""
  hi = jax.lax.Precision.HIGHEST
  x = frames.astype(jnp.float32) / 127.5 - 1.0
  x = jnp.einsum("hH,tHWc->thWc", mh, x, precision=hi)
  x = jnp.einsum("wW,thWc->thwc", mw, x, precision=hi)
  return jnp.clip(x, -1.0, 1.0)  # bicubic overshoots; the VAE's input range is [−1, 1]


def resize_clip(frames, h, w):
  """Centre-crop `[T, H0, W0, 3]` uint8 frames to the aspect of h×w and resize them -> `[T, h, w, 3]` (device)."""
  top, left, ch, cw = crop_box(frames.shape[1], frames.shape[2], h, w)
  return _resize(frames, resize_matrix(frames.shape[1], h, top, ch), resize_matrix(frames.shape[2], w, left, cw))


def frame_indices(num_frames, fps, src_fps):
  """Source frames shown at times i / fps (i < num_frames) of a clip recorded at `src_fps`."""
  return np.floor(np.arange(num_frames) * (src_fps / fps) + 1e-6).astype(np.int64)


def read_clip(path, *, num_frames, fps, sizes, max_aspect_change):
  """(uint8 `[num_frames, H0, W0, 3]` sampled frames, bucket (h, w), source info with the file's
  `fingerprint`); raises Skip with the reason. Decoding streams and stops after the last needed frame, so long
  videos are never held in memory."""
  if not os.path.isfile(path):
    raise Skip(f"missing: no file {path}")
  try:
    fp = fingerprint(path)   # before decoding: a write during the read shows as another stat afterwards
  except FileNotFoundError:
    raise Skip(f"missing: no file {path}") from None
  except OSError as e:
    raise Skip(f"unreadable: {e.strerror or type(e).__name__}") from None
  if path.lower().endswith(".npy"):
    out = read_npy_clip(path, num_frames=num_frames, sizes=sizes, max_aspect_change=max_aspect_change)
  else:
    out = read_video_clip(path, num_frames=num_frames, fps=fps, sizes=sizes, max_aspect_change=max_aspect_change)
  try:
    after = fingerprint(path, digest=False)
  except FileNotFoundError:
    raise Skip(f"missing: {path} was removed while it was read") from None
  if (after["size"], after["mtime_ns"]) != (fp["size"], fp["mtime_ns"]):
    raise Skip("changed while it was read (being written?); run again to cache it")
  out[2]["fingerprint"] = fp
  return out


def read_video_clip(path, *, num_frames, fps, sizes, max_aspect_change):
  """`read_clip` for a video file (decoded by ffmpeg)."""
  import imageio_ffmpeg
  try:
    gen = imageio_ffmpeg.read_frames(path)
    meta = next(gen)
  except Exception as e:  # noqa: BLE001 - any decoder failure is a property of the file
    raise Skip(f"unreadable: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
  try:
    w0, h0 = meta["size"]
    src_fps = float(meta.get("fps") or 0)
    if not (src_fps > 0 and math.isfinite(src_fps)) or w0 < 1 or h0 < 1:
      raise Skip(f"unreadable: frame rate {src_fps} or size {w0}x{h0} is not usable")
    bucket = pick_bucket(h0, w0, sizes, max_aspect_change)
    idx = frame_indices(num_frames, fps, src_fps)
    want = {int(i) for i in idx}
    kept, n = {}, 0
    try:
      for raw in gen:
        if n in want:
          kept[n] = np.frombuffer(raw, np.uint8).reshape(h0, w0, 3)
        n += 1
        if n > idx[-1]:
          break
    except Exception as e:  # noqa: BLE001
      raise Skip(f"unreadable after {n} frames: {str(e).strip().splitlines()[0]}") from None
    if len(kept) < len(want):
      raise Skip(f"too short: {n} frames at {src_fps:g} fps; {num_frames} frames at {fps:g} fps need "
                 f"{idx[-1] + 1}")
  finally:
    gen.close()
  info = {"source_frames_read": n, "source_fps": src_fps, "source_size": [int(w0), int(h0)]}
  return np.stack([kept[int(i)] for i in idx]), bucket, info


# np.load parses the .npy header with ast.literal_eval, which CPython 3.11 can fail on when threads build ASTs at
# once ("AST constructor recursion depth mismatch", cpython#106905): preprocessing's reader threads take turns.
_NPY_LOAD_LOCK = threading.Lock()


def read_npy_clip(path, *, num_frames, sizes, max_aspect_change):
  """A lossless `.npy` clip: `[T, H, W, 3]` uint8, or float in [−1, 1] (the toy-world dataset's format). It
  carries no frame rate, so its frames are taken as already at the target fps: the first `num_frames` are used.
  Needs no ffmpeg."""
  try:
    with open(path, "rb") as f:   # np.load calls any other file "pickled (object) data"
      if f.read(6) != b"\x93NUMPY":
        raise Skip("unreadable .npy: not a NumPy .npy file (no NUMPY header)")
    with _NPY_LOAD_LOCK:   # header parse + mmap only: cheap
      v = np.load(path, mmap_mode="r", allow_pickle=False)
  except Skip:
    raise
  except Exception as e:  # noqa: BLE001 - any read failure is a property of the file
    raise Skip(f"unreadable .npy: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") \
        from None
  if v.ndim != 4 or v.shape[-1] != 3 or v.shape[1] < 1 or v.shape[2] < 1:
    raise Skip(f"unreadable .npy: shape {tuple(v.shape)}, expected [frames, height, width, 3]")
  if v.dtype != np.uint8 and v.dtype.kind != "f":
    raise Skip(f"unreadable .npy: dtype {v.dtype}, expected uint8 or float in [-1, 1]")
  if v.shape[0] < num_frames:
    raise Skip(f"too short: {v.shape[0]} frames in the .npy clip; {num_frames} are needed")
  h0, w0 = int(v.shape[1]), int(v.shape[2])
  bucket = pick_bucket(h0, w0, sizes, max_aspect_change)
  frames = np.asarray(v[:num_frames])
  if frames.dtype != np.uint8:
    lo, hi = float(frames.min()), float(frames.max())
    if not math.isfinite(lo + hi):
      raise Skip("unreadable .npy: NaN or infinite values in the float clip")
    if not -1.0 - NPY_RANGE_TOL <= lo <= hi <= 1.0 + NPY_RANGE_TOL:
      raise Skip(f"out of range: float .npy values span [{lo:g}, {hi:g}], expected [-1, 1] (store uint8 "
                 f"0..255 frames as uint8)")
    frames = np.round((np.clip(frames, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
  info = {"source_frames_read": num_frames, "source_fps": None, "source_size": [w0, h0]}
  return frames, bucket, info
