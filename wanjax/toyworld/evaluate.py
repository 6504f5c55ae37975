"""Prompt-adherence score of toy-world videos: `score_video(video, prompt) -> dict` and its CLI.

No reference counterpart; the analytic stand-in for VBench/GenEval on the toy world (docs/toyworld.md).

  python -m wanjax.toyworld.evaluate --videos out/ --prompts heldout.json [--out scores.json] [--min-score 0.9]

`--videos` is a folder (its .mp4/.npy files, sorted by name) or a comma-separated list of files; `--prompts` a
.txt (one prompt per line) or .json (a list, `{"prompts": [...]}`, or `{video stem: prompt}`) paired with the
videos in sorted order. Without it each video's prompt comes from its sidecar: `<stem>.txt` (the caption the
toy-world dataset writes) when present, else `<stem>.json` (the record `infer.sample` writes beside each video,
its `config.prompt`; `infer.serve`'s `request.prompt`), so `--videos outputs/` scores the sampler's folder as is.
Prints a table, writes the JSON with every term per video, exits 0; 2 on a usage error; 1 when `--min-score` is
given and the mean is below it; 130 on Ctrl-C.

The score of one video is a weighted sum (`WEIGHTS`, total 1) of terms in [0, 1]:
- scene terms: `count` (fraction of frames with exactly the prompted number of objects), `background`
  (median frame colour near the prompted background);
- object terms, averaged over the prompted objects. Each prompted object is matched to the track of its colour,
  or, when that colour is absent, to the longest unmatched track of another colour (its `colour` term is then
  0, the others are still measured): `colour`; `shape` and `size` (fraction of all T frames in which the object
  is seen and classified as prompted, so vanishing objects lose them too); `direction` (angle between the
  fitted displacement and the prompted direction: 1 up to 22.5°, 0 from 67.5°); `speed` (membership of the
  fitted displacement over the clip in the prompted speed band); `smoothness` (mean of three ramps: residual
  of a straight-line fit of the centroids, frame-to-frame jitter, area flicker); `sharpness` (edge width:
  renders have a one-pixel anti-aliased ramp, blurred videos a wide one). Motion terms need the object in at
  least 3 frames. `presence` (fraction of frames in which it is seen) is reported, not weighted.
`correct` is the all-or-nothing version (every attribute's class right), as GenEval reports it.
"""

import glob
import json
import math
import os
import sys

import numpy as np

from wanjax import fileio
from wanjax.errors import UsageError
from wanjax.toyworld import detect, world

WEIGHTS = {"count": 0.10, "background": 0.05, "colour": 0.15, "shape": 0.15, "size": 0.10,
           "direction": 0.15, "speed": 0.10, "smoothness": 0.05, "sharpness": 0.15}
assert abs(sum(WEIGHTS.values()) - 1.0) < 1e-9
OBJECT_TERMS = ("colour", "presence", "shape", "size", "direction", "speed", "smoothness", "sharpness")
assert set(WEIGHTS) == {"count", "background"} | set(OBJECT_TERMS) - {"presence"}
# Distances below are fractions of the frame side; ramps are (value where the term is 1, value where it is 0).
STATIC = 0.06                          # fitted displacements shorter than this have no direction
DIRECTION_RAMP_DEG = (22.5, 67.5)
SPEED_BANDS = {  # piecewise-linear membership: 0 at a, rising to 1 at b, 1 until c, 0 at d
    "slowly": (0.07, 0.13, 0.27, 0.34),
    "quickly": (0.28, 0.36, 0.60, 0.80),
}
RESIDUAL_RAMP = (0.015, 0.05)          # RMS distance of the centroids from the fitted line
JITTER_RAMP = (0.02, 0.06)             # RMS second difference of consecutive centroids
FLICKER_RAMP = (0.10, 0.40)            # coefficient of variation of the area
BACKGROUND_RAMP = (0.25, 0.60)         # distance of the median colour from the prompted background
EDGE_WIDTH_RAMP = (2.0, 5.0)           # median edge pixels per outline pixel (renders: 0 to 1.8)
CORRECT_MIN_FRACTION = 0.9             # `correct`: presence, count, shape and size right in this many frames
VIDEO_EXTENSIONS = (".mp4", ".npy")
assert set(SPEED_BANDS) == set(world.SPEED_DISTANCE)


def _ramp(value, one_at, zero_at):
  """1 at or below `one_at`, 0 at or above `zero_at`, linear between."""
  return float(np.clip((zero_at - value) / (zero_at - one_at), 0.0, 1.0))


def _band(value, a, b, c, d):
  return float(np.clip(min((value - a) / (b - a), (d - value) / (d - c)), 0.0, 1.0))


def _nearest_direction(dx, dy):
  return max(world.DIRECTIONS, key=lambda k: dx * world.DIRECTIONS[k][0] + dy * world.DIRECTIONS[k][1])


def _speed_class(distance):
  if distance < STATIC:
    return "static"
  return max(SPEED_BANDS, key=lambda s: _band(distance, *SPEED_BANDS[s]) - 1e-3 * abs(
      distance - world.SPEED_DISTANCE[s]))


def _motion(track, frames):
  """Straight-line fit of the centroids over clip time: displacement per clip, residual, jitter, flicker."""
  t = np.asarray([i for i, b in enumerate(track) if b is not None])
  u = t / (frames - 1)
  xy = np.asarray([[track[i].x, track[i].y] for i in t])
  design = np.stack([np.ones_like(u), u], axis=1)
  coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
  residual = float(np.sqrt(np.mean(np.sum((design @ coef - xy) ** 2, axis=1))))
  consecutive = [k for k in range(len(t) - 2) if t[k + 2] - t[k] == 2]
  if consecutive:
    second = np.stack([xy[k] - 2 * xy[k + 1] + xy[k + 2] for k in consecutive])
    jitter = float(np.sqrt(np.mean(np.sum(second ** 2, axis=1))))
  else:
    jitter = float("inf")
  areas = np.asarray([track[i].area for i in t])
  flicker = float(np.std(areas) / max(np.mean(areas), 1e-12))
  return coef[1], residual, jitter, flicker


def _object_terms(obj: world.SceneObject, track, colour_ok: bool, frames: int) -> dict:
  """Terms and measurements of one prompted object against its matched track (None: not found)."""
  zero = {k: 0.0 for k in OBJECT_TERMS}
  out = {"prompt": dict(shape=obj.shape, colour=obj.colour, size=obj.size, direction=obj.direction,
                        speed=obj.speed)}
  if track is None:
    return {**out, "terms": zero, "found": False, "correct": False}
  seen = [b for b in track if b is not None]
  shapes = [b.shape for b in seen]
  sizes = [b.size for b in seen]
  edge_width = float(np.median([b.edge_width for b in seen]))
  terms = dict(zero, colour=float(colour_ok), presence=len(seen) / frames,
               shape=shapes.count(obj.shape) / frames, size=sizes.count(obj.size) / frames,
               sharpness=_ramp(edge_width, *EDGE_WIDTH_RAMP))
  measured = {"colour": seen[0].colour, "frames_seen": len(seen),
              "shape": max(set(shapes), key=shapes.count), "size": max(set(sizes), key=sizes.count),
              "mean_area": float(np.mean([b.area for b in seen])), "edge_width": edge_width}
  if len(seen) >= 3:
    (dx, dy), residual, jitter, flicker = _motion(track, frames)
    distance = math.hypot(dx, dy)
    ux, uy = world.DIRECTIONS[obj.direction]
    if distance >= STATIC:
      angle = math.degrees(math.acos(max(-1.0, min(1.0, (dx * ux + dy * uy) / distance))))
      terms["direction"] = _ramp(angle, *DIRECTION_RAMP_DEG)
      measured["direction"] = _nearest_direction(dx, dy)
      measured["angle_error_deg"] = angle
    else:
      measured["direction"] = "static"
    terms["speed"] = _band(distance, *SPEED_BANDS[obj.speed])
    terms["smoothness"] = float(np.mean([_ramp(residual, *RESIDUAL_RAMP), _ramp(jitter, *JITTER_RAMP),
                                         _ramp(flicker, *FLICKER_RAMP)]))
    measured.update(displacement=[float(dx), float(dy)], distance=distance, speed=_speed_class(distance),
                    residual=residual, jitter=jitter, area_cv=flicker)
  correct = (colour_ok and terms["presence"] >= CORRECT_MIN_FRACTION
             and terms["shape"] >= CORRECT_MIN_FRACTION and terms["size"] >= CORRECT_MIN_FRACTION
             and measured.get("direction") == obj.direction and measured.get("speed") == obj.speed)
  return {**out, "terms": terms, "found": True, "correct": bool(correct), "measured": measured}


def _match(scene: world.Scene, tracks: dict):
  """Prompted object → (track colour or None, colour_ok); unmatched tracks are reported as extras."""
  def seen(c):
    return sum(b is not None for b in tracks[c])

  free = sorted(tracks, key=lambda c: (-seen(c), c))
  matches = [None] * len(scene.objects)
  for i, o in enumerate(scene.objects):
    if o.colour in tracks:
      matches[i] = (o.colour, True)
      free.remove(o.colour)
  for i in range(len(scene.objects)):
    if matches[i] is None:
      matches[i] = (free.pop(0), False) if free else (None, False)
  return matches, free


def score_video(video, prompt) -> dict:
  """Scores a `[T, H, W, 3]` video (float in [−1, 1] or uint8) against a prompt (text or `Scene`).

  Returns {"score": float in [0, 1], "correct": bool, "terms": {name: value}, "objects": [...],
  "extra_colours": [...], "prompt": str}; see the module docstring for the terms and `WEIGHTS`.
  """
  scene = world.parse_prompt(prompt) if isinstance(prompt, str) else prompt
  world.check_scene(scene)
  seg, blobs, tracks = detect.detect(video)
  frames = seg.labels.shape[0]

  per_frame = np.bincount([b.frame for b in blobs], minlength=frames)
  count = float(np.mean(per_frame == len(scene.objects)))
  median = np.median(seg.background, axis=0)
  bg_distance = float(np.linalg.norm(median - np.asarray(world.BACKGROUNDS[scene.background])))
  background = _ramp(bg_distance, *BACKGROUND_RAMP)

  matches, extras = _match(scene, tracks)
  objects = [_object_terms(o, tracks.get(c), ok, frames) for o, (c, ok) in zip(scene.objects, matches)]
  terms = {"count": count, "background": background}
  for k in OBJECT_TERMS:
    terms[k] = float(np.mean([o["terms"][k] for o in objects]))
  score = float(sum(WEIGHTS[k] * terms[k] for k in WEIGHTS))
  correct = (count >= CORRECT_MIN_FRACTION and background > 0.5 and all(o["correct"] for o in objects))
  return {"prompt": world.prompt_for(scene.spec()), "score": score, "correct": bool(correct), "terms": terms,
          "objects": objects, "extra_colours": extras, "frames": frames,
          "objects_per_frame": per_frame.tolist(), "background_distance": bg_distance}


# -------------------------------------------------------------------------------------------------- CLI --

def read_video_file(path) -> np.ndarray:
  """A clip from .npy (float in [−1, 1] or uint8, `[T, H, W, 3]`) or .mp4 (through wanjax.video)."""
  if not os.path.isfile(path):
    raise UsageError(f"video {path!r} does not exist")
  if path.endswith(".npy"):
    try:
      return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
      raise UsageError(f"{path}: not a readable .npy array ({e})") from None
  if path.endswith(".mp4"):
    from wanjax.video import read_video
    return read_video(path)[0]
  raise UsageError(f"video {path!r} has an unsupported extension; valid: {', '.join(VIDEO_EXTENSIONS)}")


def list_videos(spec: str) -> list:
  """A folder's .mp4/.npy files (sorted) or a comma-separated list of files."""
  if os.path.isdir(spec):
    files = sorted(f for f in glob.glob(os.path.join(spec, "*")) if f.endswith(VIDEO_EXTENSIONS))
    if not files:
      raise UsageError(f"folder {spec!r} holds no {' or '.join(VIDEO_EXTENSIONS)} files")
    return files
  files = [f.strip() for f in spec.split(",") if f.strip()]
  if not files:
    raise UsageError("--videos is empty; give a folder or comma-separated video files")
  for f in files:
    if not os.path.isfile(f):
      raise UsageError(f"video {f!r} does not exist (--videos takes a folder or comma-separated files)")
  return files


def sidecar_prompt(video) -> str:
  """The prompt of one video from its sidecars: `<stem>.txt` (a caption, as the toy-world dataset writes), else
  `<stem>.json` (`infer.sample`'s record: `config.prompt`; `infer.serve`'s: `request.prompt`)."""
  stem = os.path.splitext(video)[0]
  txt, meta = stem + ".txt", stem + ".json"
  if os.path.isfile(txt):
    with open(txt, encoding="utf-8") as f:
      return f.read().strip()
  if not os.path.isfile(meta):
    raise UsageError(f"no prompt for {video}: give --prompts, put the caption in {txt}, or keep the {meta} that "
                     f"infer.sample writes beside its video")
  try:
    with open(meta, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UsageError(f"{meta}: not a readable JSON sidecar ({e}); give --prompts or a {txt} caption") from None
  for section in ("config", "request"):
    entry = data.get(section) if isinstance(data, dict) else None
    prompt = entry.get("prompt") if isinstance(entry, dict) else None
    if isinstance(prompt, str) and prompt.strip():
      return prompt.strip()
  raise UsageError(f"{meta} holds no prompt (config.prompt or request.prompt); give --prompts or a {txt} caption")


def read_prompts(path, videos) -> list:
  """One prompt per video: from a .txt/.json file (see the module docstring), else from each video's sidecars
  (`sidecar_prompt`)."""
  stems = [os.path.splitext(os.path.basename(v))[0] for v in videos]
  if not path:
    return [sidecar_prompt(v) for v in videos]
  if not os.path.isfile(path):
    raise UsageError(f"prompts file {path!r} does not exist")
  with open(path, encoding="utf-8") as f:
    if path.endswith(".json"):
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None
    else:
      data = [line.strip() for line in f if line.strip()]
  if isinstance(data, dict) and "prompts" in data:
    data = data["prompts"]
  if isinstance(data, dict):
    missing = sorted(set(stems) - set(data))
    if missing:
      raise UsageError(f"{path} has no prompt for the videos {', '.join(missing[:10])}; keys are video stems")
    return [data[s] for s in stems]
  if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
    raise UsageError(f"{path}: expected a list of prompts, {{'prompts': [...]}} or {{video stem: prompt}}")
  if len(data) != len(videos):
    raise UsageError(f"{path} has {len(data)} prompts for {len(videos)} videos; they are paired in sorted "
                     f"video order, so the counts must match")
  return data


def evaluate_files(videos, prompts) -> dict:
  """Scores every (video file, prompt) pair; returns the report written by the CLI."""
  for p in prompts:  # check every prompt before decoding any video
    world.parse_prompt(p)
  rows = []
  try:
    from tqdm import tqdm
    pairs = tqdm(list(zip(videos, prompts)), desc="toyworld score", leave=False)
  except ImportError:
    pairs = zip(videos, prompts)
  for path, prompt in pairs:
    rows.append({"video": path, **score_video(read_video_file(path), prompt)})
  return {"mean_score": float(np.mean([r["score"] for r in rows])),
          "accuracy": float(np.mean([r["correct"] for r in rows])),
          "mean_terms": {k: float(np.mean([r["terms"][k] for r in rows])) for k in WEIGHTS},
          "weights": WEIGHTS, "videos": rows}


def format_table(report) -> str:
  cols = ("count", "colour", "shape", "size", "direction", "speed", "smoothness", "sharpness")
  head = f"{'video':<24} {'score':>5} {'ok':>2} " + " ".join(f"{c[:6]:>6}" for c in cols) + "  prompt"
  lines = [head]
  for r in report["videos"]:
    name = os.path.basename(r["video"])[:24]
    lines.append(f"{name:<24} {r['score']:5.3f} {'y' if r['correct'] else 'n':>2} "
                 + " ".join(f"{r['terms'][c]:6.2f}" for c in cols) + f"  {r['prompt']}")
  lines.append(f"mean score {report['mean_score']:.4f}, accuracy {report['accuracy']:.3f} "
               f"over {len(report['videos'])} videos")
  return "\n".join(lines)


def save_json(path, data):
  with fileio.atomic_open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)


def main(argv) -> int:
  from absl import flags
  f = flags.FLAGS
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")
  if not f.videos:
    raise UsageError("--videos is required (a folder or comma-separated .mp4/.npy files)")
  min_score = f["min-score"].value
  if min_score is not None and not 0.0 <= min_score <= 1.0:
    raise UsageError(f"--min-score={min_score} must be in [0, 1]")
  videos = list_videos(f.videos)
  report = evaluate_files(videos, read_prompts(f.prompts, videos))
  save_json(f.out, report)
  # The CLI's output (stdout); the library functions above write nothing.
  sys.stdout.write(f"{format_table(report)}\nwrote {f.out}\n")
  if min_score is not None and report["mean_score"] < min_score:
    sys.stdout.write(f"mean score {report['mean_score']:.4f} is below --min-score {min_score}\n")
    return 1
  return 0


def cli_main(argv):
  """`main` as the CLI runs it: its exit status; a usage error is one line (exit 2), Ctrl-C one line (exit 130)."""
  from infer import cli   # the CLIs' shared flag parsing and exit codes
  sys.exit(cli.call_main(main, argv, "the report is written whole once every video is scored, so --out was not "
                                     "written (an earlier report there is unchanged)"))


def run():
  from absl import app, flags
  from infer import cli
  flags.DEFINE_string("videos", None, "folder of .mp4/.npy clips, or comma-separated files")
  flags.DEFINE_string("prompts", None, ".txt (one per line) or .json prompts in sorted video order; default: each "
                      "video's <stem>.txt caption, else the prompt in its <stem>.json (infer.sample's sidecar)")
  flags.DEFINE_string("out", "toyworld_scores.json", "where the per-video JSON report is written")
  flags.DEFINE_float("min-score", None, "exit with status 1 when the mean score is below this")
  app.run(cli_main, flags_parser=cli.flags_parser())


if __name__ == "__main__":
  run()
