"""The toy world: seeded procedural scenes, their prompts (both ways) and an anti-aliased NumPy renderer.

No reference counterpart: this is the small synthetic text-to-video world the tiny Wan models are trained and
scored on (docs/toyworld.md). A scene holds one or two objects, each a shape × colour × size moving in a straight
line at constant speed, over a plain background.

Geometry (all in a unit square, x right, y down; the renderer maps it onto the central min(H, W) square):
- every shape of a size class has the same area, π·r² with r = `SIZE_RADIUS[size]`, so the size class can be read
  from the area alone; shapes never rotate (triangles point up, diamonds are squares standing on a corner);
- an object's position is the centre of its bounding box; `start` is that centre at frame 0;
- motion is linear over the clip: position(t) = start + velocity · t / (T − 1), velocity = `SPEED_DISTANCE[speed]`
  × the unit vector of the direction. Speed is a distance per clip, not per frame, so T only sets the temporal
  sampling: a 17-frame and a 33-frame render of one scene show the same motion;
- objects never leave the frame: `place` draws start positions so the whole bounding box stays inside, with a
  `MARGIN`, for the entire clip (no wrapping), and the two objects of a scene never touch (boxes kept `GAP`
  apart at every frame) and have different colours, so each colour names one object.
"""

import dataclasses
import math
import re

import numpy as np

from wanjax.errors import UsageError
from wanjax.toyworld import vocab
from wanjax.video import frame_count_hint

# Colours in [−1, 1] (the video range); object colours are near-pure so a palette lookup segments them.
COLOURS = {
    "red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0), "white": (1.0, 1.0, 1.0), "purple": (0.25, -1.0, 1.0),
}
BACKGROUNDS = {"gray": (0.0, 0.0, 0.0), "black": (-1.0, -1.0, -1.0), "brown": (-0.2, -0.5, -0.7)}
DEFAULT_BACKGROUND = "gray"
SIZE_RADIUS = {"small": 0.07, "large": 0.12}          # equal-area radius, fraction of the frame side
SPEED_DISTANCE = {"slowly": 0.20, "quickly": 0.45}     # displacement over the whole clip, fraction of the side
DEFAULT_SPEED = "slowly"
MARGIN = 0.03  # smallest distance between a bounding box and the frame edge
GAP = 0.04     # smallest distance between the bounding boxes of two objects, at every frame
MAX_OBJECTS = 2

_S2 = math.sqrt(0.5)
DIRECTIONS = {  # canonical phrase → unit vector (y down)
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
    "up and left": (-_S2, -_S2), "up and right": (_S2, -_S2),
    "down and left": (-_S2, _S2), "down and right": (_S2, _S2),
}
# Bounding-box half extents (x, y) of each shape for equal-area radius 1: circle r; square side √π·r;
# diamond diagonal √(2π)·r; equilateral triangle side a = √(4π/√3)·r, height √3/2·a.
_TRI_SIDE = math.sqrt(4.0 * math.pi / math.sqrt(3.0))
HALF_EXTENT = {
    "circle": (1.0, 1.0),
    "square": (math.sqrt(math.pi) / 2, math.sqrt(math.pi) / 2),
    "diamond": (math.sqrt(2.0 * math.pi) / 2, math.sqrt(2.0 * math.pi) / 2),
    "triangle": (_TRI_SIDE / 2, _TRI_SIDE * math.sqrt(3.0) / 4),
}
assert set(COLOURS) == set(vocab.COLOURS) and set(BACKGROUNDS) == set(vocab.BACKGROUNDS)
assert set(SIZE_RADIUS) == set(vocab.SIZES) and set(SPEED_DISTANCE) == set(vocab.SPEEDS)
assert set(HALF_EXTENT) == set(vocab.SHAPES)


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One moving object; `start` is None until `place` draws it (a parsed prompt is a spec, not a scene)."""
  shape: str
  colour: str
  size: str
  direction: str
  speed: str = DEFAULT_SPEED
  start: tuple | None = None  # (x, y) bounding-box centre at frame 0, unit-square coordinates

  @property
  def radius(self) -> float:
    return SIZE_RADIUS[self.size]

  @property
  def area(self) -> float:
    """Area as a fraction of the frame's area (side²)."""
    return math.pi * self.radius ** 2

  @property
  def half_extent(self) -> tuple:
    hx, hy = HALF_EXTENT[self.shape]
    return hx * self.radius, hy * self.radius

  @property
  def velocity(self) -> tuple:
    """Displacement (dx, dy) over the whole clip, in frame sides."""
    ux, uy = DIRECTIONS[self.direction]
    d = SPEED_DISTANCE[self.speed]
    return ux * d, uy * d

  def position(self, u):
    """Bounding-box centre at clip time u ∈ [0, 1] (u may be an array); needs `start`."""
    (x0, y0), (vx, vy) = self.start, self.velocity
    return x0 + vx * np.asarray(u), y0 + vy * np.asarray(u)


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: tuple
  background: str = DEFAULT_BACKGROUND

  @property
  def placed(self) -> bool:
    return all(o.start is not None for o in self.objects)

  def spec(self) -> "Scene":
    """The scene without start positions: what a prompt determines."""
    return dataclasses.replace(self, objects=tuple(dataclasses.replace(o, start=None) for o in self.objects))


# ---------------------------------------------------------------------------------------------- prompts --

def _clause(o: SceneObject) -> str:
  article = "an" if o.size[0] in "aeiou" else "a"
  return f"{article} {o.size} {o.colour} {o.shape} moves {o.direction} {o.speed}"


def prompt_for(scene: Scene) -> str:
  """The canonical prompt; the background is named only when it is not the default (gray)."""
  check_scene(scene)
  text = " while ".join(_clause(o) for o in scene.objects)
  if scene.background != DEFAULT_BACKGROUND:
    text += f" on a {scene.background} background"
  return text


def tokenize_words(text: str) -> list:
  """Lower-cased words as the tokenizer's Whitespace pre-tokeniser splits them (`\\w+|[^\\w\\s]+`)."""
  return re.findall(r"\w+|[^\w\s]+", str(text).lower())


class _Parser:
  """Recursive descent over the grammar in docs/toyworld.md; errors name the word and position at fault."""

  def __init__(self, text, words):
    self.text, self.words, self.i = text, words, 0

  def peek(self):
    return self.words[self.i] if self.i < len(self.words) else None

  def take(self, allowed, what):
    w = self.peek()
    if w not in allowed:
      found = f"word {self.i + 1} {w!r}" if w is not None else "the end of the prompt"
      raise UsageError(f"prompt {self.text!r}: expected {what} ({', '.join(allowed)}) but found {found}; "
                       f"grammar: 'a SIZE COLOUR SHAPE moves DIRECTION [SPEED] [while a ...] "
                       f"[on a BACKGROUND background]'")
    self.i += 1
    return w

  def direction(self):
    first = self.take(vocab.DIRECTION_WORDS, "a direction")
    if self.peek() != "and":
      return first
    self.take(("and",), "'and'")
    vertical, horizontal = ("up", "down"), ("left", "right")
    second = self.take(horizontal if first in vertical else vertical, "the second half of a diagonal")
    v, h = (first, second) if first in vertical else (second, first)
    return f"{v} and {h}"  # "left and up" is accepted and written canonically as "up and left"

  def clause(self):
    self.take(vocab.ARTICLES, "an article")
    size = self.take(vocab.SIZES, "a size")
    colour = self.take(vocab.COLOURS, "a colour")
    shape = self.take(vocab.SHAPES, "a shape")
    self.take(vocab.VERBS, "the verb")
    direction = self.direction()
    speed = self.take(vocab.SPEEDS, "a speed") if self.peek() in vocab.SPEEDS else DEFAULT_SPEED
    return SceneObject(shape=shape, colour=colour, size=size, direction=direction, speed=speed)

  def prompt(self):
    objects = [self.clause()]
    while self.peek() == "while":
      self.take(("while",), "'while'")
      objects.append(self.clause())
    background = DEFAULT_BACKGROUND
    if self.peek() == "on":
      self.take(("on",), "'on'")
      self.take(vocab.ARTICLES, "an article")
      background = self.take(vocab.BACKGROUNDS, "a background colour")
      self.take(vocab.BACKGROUND_NOUN, "'background'")
    if self.peek() == ".":
      self.take((".",), "'.'")
    if self.peek() is not None:
      raise UsageError(f"prompt {self.text!r}: unexpected word {self.i + 1} {self.peek()!r} after a complete "
                       f"sentence; join two objects with 'while' and end with 'on a COLOUR background'")
    return Scene(objects=tuple(objects), background=background)


def parse_prompt(text: str) -> Scene:
  """Prompt text → Scene spec (objects without start positions). Raises UsageError on anything else."""
  words = tokenize_words(text)
  unknown = sorted({w for w in words if w not in vocab.VOCAB or w in vocab.SPECIALS})
  if unknown:
    raise UsageError(f"prompt {text!r} has words outside the toy-world vocabulary: {', '.join(unknown)}; "
                     f"valid words — {vocab.describe_vocabulary()}")
  if not words:
    raise UsageError("the prompt is empty; e.g. 'a small red circle moves left'")
  scene = _Parser(text, words).prompt()
  check_scene(scene, text=text)
  return scene


def check_scene(scene: Scene, *, text=None):
  """Validates object count, word choices and distinct colours (each colour must name one object)."""
  where = f"prompt {text!r}" if text else "scene"
  n = len(scene.objects)
  if not 1 <= n <= MAX_OBJECTS:
    raise UsageError(f"{where} has {n} objects; the toy world holds 1 to {MAX_OBJECTS}")
  for o in scene.objects:
    for field, table in (("shape", HALF_EXTENT), ("colour", COLOURS), ("size", SIZE_RADIUS),
                         ("direction", DIRECTIONS), ("speed", SPEED_DISTANCE)):
      if getattr(o, field) not in table:
        raise UsageError(f"{where}: {field} {getattr(o, field)!r} is not valid; valid: {', '.join(table)}")
  if scene.background not in BACKGROUNDS:
    raise UsageError(f"{where}: background {scene.background!r} is not valid; valid: {', '.join(BACKGROUNDS)}")
  colours = [o.colour for o in scene.objects]
  repeated = sorted({c for c in colours if colours.count(c) > 1})
  if repeated:
    raise UsageError(f"{where} gives two objects the colour {repeated[0]!r}; objects in one scene need "
                     f"different colours")


# ------------------------------------------------------------------------------------------- sampling --

def _as_rng(rng):
  return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _start_range(o: SceneObject, axis: int):
  h, v = o.half_extent[axis], o.velocity[axis]
  return MARGIN + h - min(v, 0.0), 1.0 - MARGIN - h - max(v, 0.0)


def _apart(a: SceneObject, b: SceneObject, steps=65) -> bool:
  """True when the two bounding boxes stay `GAP` apart (on at least one axis) over the whole clip."""
  u = np.linspace(0.0, 1.0, steps)
  (ax, ay), (bx, by) = a.position(u), b.position(u)
  sep_x = np.abs(ax - bx) - a.half_extent[0] - b.half_extent[0]
  sep_y = np.abs(ay - by) - a.half_extent[1] - b.half_extent[1]
  return bool(np.all(np.maximum(sep_x, sep_y) >= GAP))


def place(scene: Scene, rng, *, max_tries=200) -> Scene:
  """Draws start positions so every object stays inside the frame and the objects never touch."""
  check_scene(scene)
  rng = _as_rng(rng)
  for _ in range(max_tries):
    placed = []
    for o in scene.objects:
      lo_hi = [_start_range(o, axis) for axis in (0, 1)]
      start = tuple(float(rng.uniform(lo, hi)) for lo, hi in lo_hi)
      placed.append(dataclasses.replace(o, start=start))
    if all(_apart(a, b) for i, a in enumerate(placed) for b in placed[i + 1:]):
      return dataclasses.replace(scene, objects=tuple(placed))
  raise UsageError(f"could not place {prompt_for(scene)!r} without the objects touching after {max_tries} "
                   f"tries; use smaller objects or different directions")


def sample_spec(rng) -> Scene:
  """A random scene spec: 1 or 2 objects (even odds), distinct colours, gray background half of the time."""
  rng = _as_rng(rng)
  n = int(rng.integers(1, MAX_OBJECTS + 1))
  colours = rng.permutation(len(vocab.COLOURS))[:n]
  objects = tuple(SceneObject(
      shape=vocab.SHAPES[rng.integers(len(vocab.SHAPES))], colour=vocab.COLOURS[c],
      size=vocab.SIZES[rng.integers(len(vocab.SIZES))],
      direction=list(DIRECTIONS)[rng.integers(len(DIRECTIONS))],
      speed=vocab.SPEEDS[rng.integers(len(vocab.SPEEDS))]) for c in colours)
  background = DEFAULT_BACKGROUND if rng.random() < 0.5 else vocab.BACKGROUNDS[1 + rng.integers(2)]
  return Scene(objects=objects, background=background)


def sample_scene(rng, *, exclude=()) -> Scene:
  """A random placed scene; scenes whose prompt is in `exclude` (e.g. the held-out set) are redrawn."""
  rng = _as_rng(rng)
  exclude = frozenset(exclude)
  for _ in range(10_000):
    spec = sample_spec(rng)
    if prompt_for(spec) in exclude:
      continue
    try:
      return place(spec, rng)
    except UsageError:  # a rare combination (two large fast objects) with no room: draw another scene
      continue
  raise UsageError(f"could not draw a scene outside the {len(exclude)} excluded prompts")


# ------------------------------------------------------------------------------------------ rendering --

def check_video_size(frames: int, height: int, width: int):
  """T = 4k + 1 ≥ 5 (the Wan VAE's temporal grid), H and W multiples of 16 and ≥ 32."""
  if frames < 5 or (frames - 1) % 4:
    raise UsageError(f"frames={frames} must be 4k+1 and >= 5 ({frame_count_hint(frames, minimum=5)})")
  for name, v in (("height", height), ("width", width)):
    if v < 32 or v % 16:
      raise UsageError(f"{name}={v} must be a multiple of 16 and >= 32 (e.g. 64 or 96)")


def frame_square(height: int, width: int):
  """(x offset, y offset, side) in pixels of the central square the unit scene square maps onto."""
  side = min(height, width)
  return (width - side) / 2.0, (height - side) / 2.0, float(side)


def signed_distance(shape, dx, dy, hx, hy):
  """Signed distance (pixels, < 0 inside) to the shape's outline; dx, dy are offsets from the box centre."""
  if shape == "circle":
    return np.sqrt(dx * dx + dy * dy) - hx
  if shape == "square":
    return np.maximum(np.abs(dx) - hx, np.abs(dy) - hy)
  if shape == "diamond":
    return (np.abs(dx) + np.abs(dy) - hx) * _S2
  # Triangle pointing up: base edge y = +hy, slanted edges from (∓hx, hy) to the apex (0, −hy).
  norm = math.hypot(2.0 * hy, hx)
  slant = (2.0 * hy * np.abs(dx) - hx * (dy + hy)) / norm
  return np.maximum(dy - hy, slant)


def coverage(o: SceneObject, frames: int, height: int, width: int):
  """Anti-aliased coverage `[T, H, W]` in [0, 1]: a one-pixel linear ramp across the outline."""
  ox, oy, side = frame_square(height, width)
  cx, cy = o.position(np.arange(frames) / (frames - 1))
  cx, cy = ox + cx * side, oy + cy * side
  hx, hy = (h * side for h in o.half_extent)
  ys = np.arange(height, dtype=np.float64) + 0.5  # pixel centres
  xs = np.arange(width, dtype=np.float64) + 0.5
  dx = xs[None, None, :] - cx[:, None, None]
  dy = ys[None, :, None] - cy[:, None, None]
  return np.clip(0.5 - signed_distance(o.shape, dx, dy, hx, hy), 0.0, 1.0)


def render(scene: Scene, frames: int = 17, height: int = 64, width: int = 64):
  """Renders a placed scene to `[T, H, W, 3]` float32 in [−1, 1]; objects are drawn in order over the background."""
  check_video_size(frames, height, width)
  check_scene(scene)
  if not scene.placed:
    raise UsageError("the scene has objects without start positions (a parsed prompt); call "
                     "place(scene, rng) first")
  video = np.empty((frames, height, width, 3), np.float64)
  video[:] = BACKGROUNDS[scene.background]
  for o in scene.objects:
    a = coverage(o, frames, height, width)[..., None]
    video = video * (1.0 - a) + np.asarray(COLOURS[o.colour]) * a
  return video.astype(np.float32)
