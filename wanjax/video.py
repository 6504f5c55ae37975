"""Video output: atomic H.264 mp4 (16 fps by default), optional PNG frames, and a small reader for tests.

Mirrors the reference `wan/utils/utils.py` `cache_video`: clamp to [−1, 1], map to [0, 1], multiply by 255 and
truncate to uint8, then `imageio` with `codec='libx264', quality=8`. Here `imageio-ffmpeg` is driven directly so
frames can be appended progressively (`VideoWriter`: open, append chunks, atomic rename at `close`); readers never
see a half-written file under the final name.
"""

import contextlib
import os
import shutil
import tempfile
import warnings

import numpy as np

from wanjax.errors import UsageError
from wanjax import fileio
from wanjax.fileio import publish

DEFAULT_FPS = 16
QUALITY = 8  # the reference's imageio quality (0–10)


def frame_count_hint(frames: int, minimum: int = 1) -> str:
  """'e.g. A or B': the valid 4k+1 frame counts (at least `minimum`, itself 4k+1) around `frames`, for errors."""
  lo = max(minimum, frames - (frames - 1) % 4)
  return f"e.g. {lo} or {lo + 4}"


def to_uint8(frames):
  """Frames in [−1, 1] (float, `[T, H, W, 3]`) → uint8; uint8 input passes through."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames
  x = np.clip(frames.astype(np.float32), -1.0, 1.0)
  # Quirk: the reference truncates (`tensor.type(torch.uint8)`) instead of rounding (cache_video).
  return ((x + 1.0) / 2.0 * 255.0).astype(np.uint8)


def _check_frames(frames, size=None):
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise UsageError(f"video frames have shape {frames.shape}; expected [T, H, W, 3] (channels last)")
  h, w = frames.shape[1:3]
  if size is not None and (w, h) != size:
    raise UsageError(f"frame size {w}x{h} differs from the video's {size[0]}x{size[1]}")
  if h % 2 or w % 2:
    raise UsageError(f"frame size {w}x{h} must be even for H.264 (yuv420p); use multiples of 16")


def _temp_path(path):
  fileio.sweep_once(os.path.dirname(os.path.abspath(path)))
  fd, tmp = fileio.mkstemp(path)
  os.close(fd)
  return tmp


@contextlib.contextmanager
def _fork_then_exec():
  """Silences JAX's "os.fork() was called" RuntimeWarning for starting ffmpeg: `subprocess` forks and execs at
  once, so the deadlock it warns about cannot happen, and the warning only alarms users of the CLIs."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    yield


class VideoWriter:
  """Progressive, atomic mp4 writer: `append(frames)` any number of times, then `close()` renames into place.

  Usable as a context manager; on an exception the temporary file is removed and nothing appears at `path`.
  """

  def __init__(self, path, *, fps=DEFAULT_FPS, quality=QUALITY):
    import imageio_ffmpeg  # lazy: only video-writing code needs ffmpeg
    self._ffmpeg = imageio_ffmpeg
    self.path, self.fps, self.quality = str(path), fps, quality
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._tmp = _temp_path(self.path)
    self._gen, self.size, self.num_frames = None, None, 0

  def append(self, frames):
    """Appends `[T, H, W, 3]` frames (float in [−1, 1] or uint8)."""
    frames = to_uint8(frames)
    _check_frames(frames, self.size)
    if self._gen is None:
      self.size = (frames.shape[2], frames.shape[1])
      self._gen = self._ffmpeg.write_frames(
          self._tmp, self.size, fps=self.fps, codec="libx264", quality=self.quality, macro_block_size=2,
          ffmpeg_log_level="error")
      with _fork_then_exec():
        self._gen.send(None)   # starts ffmpeg
    for f in frames:
      self._gen.send(np.ascontiguousarray(f))
    self.num_frames += frames.shape[0]

  def close(self):
    """Finishes the stream and renames the temporary file to `path`."""
    if self._gen is None:
      self.abort()
      raise UsageError(f"no frames were appended to {self.path}")
    self._gen.close()
    self._gen = None
    publish(self._tmp, self.path)

  def abort(self):
    if self._gen is not None:
      try:
        self._gen.close()
      except Exception:  # noqa: BLE001 - best effort on an already failing path
        pass
      self._gen = None
    if os.path.exists(self._tmp):
      os.remove(self._tmp)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *exc):
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_video(path, frames, *, fps=DEFAULT_FPS):
  """Writes `[T, H, W, 3]` frames (float in [−1, 1] or uint8) to an H.264 mp4, atomically."""
  with VideoWriter(path, fps=fps) as w:
    w.append(frames)
  return path


def write_png_frames(directory, frames):
  """Writes frames as `directory/00000.png …`; the directory appears complete or not at all."""
  import imageio.v3 as iio
  frames = to_uint8(frames)
  _check_frames(frames)
  directory = os.path.abspath(directory)
  parent = os.path.dirname(directory)
  if os.path.exists(directory):   # checked first too, so that nothing is written for a run that must fail
    raise UsageError(f"frame directory {directory} already exists; choose another output name")
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
  try:
    for i, f in enumerate(frames):
      iio.imwrite(os.path.join(tmp, f"{i:05d}.png"), f)
    if os.path.exists(directory):   # appeared while writing
      raise UsageError(f"frame directory {directory} already exists; choose another output name")
    publish(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def read_video(path):
  """Reads an mp4 back: returns (frames uint8 `[T, H, W, 3]`, fps). For tests and tools."""
  import imageio_ffmpeg
  gen = imageio_ffmpeg.read_frames(str(path))
  with _fork_then_exec():
    meta = gen.__next__()   # starts ffmpeg
  w, h = meta["size"]
  frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
  return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8), float(meta["fps"])


def probe_video(path):
  """Frame count, width, height and fps of a video file."""
  frames, fps = read_video(path)
  return {"frames": int(frames.shape[0]), "height": int(frames.shape[1]), "width": int(frames.shape[2]),
          "fps": fps}
