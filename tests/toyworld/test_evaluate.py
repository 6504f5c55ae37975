"""Toy-world score: ground truth ≈ 1 on the held-out set, each corruption lowers it by a stated margin, single-
attribute errors hit exactly their term, and the CLI's files, table and exit codes."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wanjax.errors import UsageError
from wanjax.toyworld import dataset, evaluate, world

GT_MIN = 0.97
W = evaluate.WEIGHTS
# A corruption must cost at least the weight of the terms it breaks (minus float slack).
SLACK = 0.01
MARGINS = {
    "wrong_colour": W["colour"] - SLACK,
    "reversed_direction": W["direction"] - SLACK,
    "static": W["direction"] + W["speed"] - SLACK,
    "temporal_mean": W["direction"] + W["speed"] - SLACK,
    "blur": W["sharpness"] - SLACK,
}
NOISE_MAX = 0.15
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (held-out index, frames, side): one- and two-object prompts at both clip lengths and both sizes.
GT_CASES = [(0, 17, 64), (5, 33, 64), (9, 17, 96), (13, 33, 96), (16, 17, 64), (20, 33, 64), (26, 17, 96),
            (31, 33, 96)]


@pytest.mark.parametrize("index, frames, side", GT_CASES)
def test_ground_truth_scores_high(index, frames, side):
  prompt = dataset.HELDOUT_PROMPTS[index]
  r = evaluate.score_video(world.render(dataset.heldout_scene(index), frames, side, side), prompt)
  assert r["score"] >= GT_MIN, (prompt, r["terms"])
  assert r["correct"] and r["frames"] == frames and r["extra_colours"] == []


def _opposite(direction):
  flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
  return " and ".join(flip[w] for w in direction.split(" and "))


def _corrupt(kind, scene, video, frames, side, rng):
  if kind == "wrong_colour":  # every object recoloured with a colour the scene does not use
    unused = [c for c in world.COLOURS if c not in {o.colour for o in scene.objects}]
    objs = tuple(dataclasses.replace(o, colour=unused[i]) for i, o in enumerate(scene.objects))
    return world.render(dataclasses.replace(scene, objects=objs), frames, side, side)
  if kind == "reversed_direction":  # same path travelled backwards
    objs = tuple(dataclasses.replace(o, direction=_opposite(o.direction),
                                     start=tuple(np.add(o.start, o.velocity))) for o in scene.objects)
    return world.render(dataclasses.replace(scene, objects=objs), frames, side, side)
  if kind == "static":
    return np.repeat(video[:1], frames, axis=0)
  if kind == "temporal_mean":  # what a model regressing to the mean over time produces
    return np.repeat(video.mean(axis=0, keepdims=True), frames, axis=0)
  if kind == "blur":
    from scipy import ndimage
    return ndimage.gaussian_filter(video, (0, 0.03 * side, 0.03 * side, 0))
  if kind == "noise":
    return rng.uniform(-1.0, 1.0, video.shape).astype(np.float32)
  raise AssertionError(kind)


@pytest.mark.parametrize("kind", list(MARGINS) + ["noise"])
@pytest.mark.parametrize("index, frames, side", [(2, 17, 64), (18, 33, 96), (28, 17, 64)])
def test_corruptions_lower_the_score(kind, index, frames, side):
  scene, prompt = dataset.heldout_scene(index), dataset.HELDOUT_PROMPTS[index]
  video = world.render(scene, frames, side, side)
  gt = evaluate.score_video(video, prompt)["score"]
  bad = evaluate.score_video(_corrupt(kind, scene, video, frames, side, np.random.default_rng(index)), prompt)
  if kind == "noise":
    assert bad["score"] <= NOISE_MAX, bad["terms"]
  else:
    assert bad["score"] <= gt - MARGINS[kind], (kind, gt, bad["terms"])
  assert not bad["correct"]


def _single_change(index, **change):
  spec = world.parse_prompt(dataset.HELDOUT_PROMPTS[index])
  objs = (dataclasses.replace(spec.objects[0], **change),) + spec.objects[1:]
  return world.place(dataclasses.replace(spec, objects=objs), index)  # re-placed: the new motion fits the frame


@pytest.mark.parametrize("index, change, term", [
    (8, dict(shape="square"), "shape"),          # purple triangle drawn as a square
    (10, dict(shape="triangle"), "shape"),       # yellow diamond drawn as a triangle
    (12, dict(shape="square"), "shape"),         # blue circle drawn as a square
    (9, dict(size="small"), "size"),             # large square drawn small
    (15, dict(speed="quickly"), "speed"),        # slow diamond drawn fast
    (17, dict(direction="up"), "direction"),     # two objects: the first one turned by 90 degrees
])
def test_single_attribute_errors_hit_their_term(index, change, term):
  prompt = dataset.HELDOUT_PROMPTS[index]
  scene = _single_change(index, **change)
  r = evaluate.score_video(world.render(scene, 17, 64, 64), prompt)
  n = len(scene.objects)
  assert r["terms"][term] == pytest.approx(1.0 - 1.0 / n), r["terms"]
  others = {k: v for k, v in r["terms"].items() if k != term}
  assert min(others.values()) >= 0.95, others
  assert not r["correct"]


def test_extra_object_and_missing_object_hit_count():
  two = dataset.heldout_scene(16)
  one = dataclasses.replace(two, objects=two.objects[:1])
  r = evaluate.score_video(world.render(two, 17, 64, 64), world.prompt_for(one))
  assert r["terms"]["count"] == 0.0 and r["extra_colours"] == [two.objects[1].colour]
  r = evaluate.score_video(world.render(one, 17, 64, 64), world.prompt_for(two))
  assert r["terms"]["count"] == 0.0 and r["terms"]["colour"] == 0.5 and not r["objects"][1]["found"]


def test_uint8_input_and_bad_videos():
  scene, prompt = dataset.heldout_scene(3), dataset.HELDOUT_PROMPTS[3]
  video = world.render(scene, 17, 64, 64)
  as_uint8 = ((video + 1.0) * 127.5).round().astype(np.uint8)
  assert evaluate.score_video(as_uint8, prompt)["score"] >= GT_MIN
  with pytest.raises(UsageError, match="T, H, W, 3"):
    evaluate.score_video(video[..., :2], prompt)
  with pytest.raises(UsageError, match="NaN"):
    evaluate.score_video(np.full_like(video, np.nan), prompt)
  with pytest.raises(UsageError, match="vocabulary"):
    evaluate.score_video(video, "a small red dog moves left")


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "wanjax.toyworld.evaluate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_cli_files_table_and_exit_codes(tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  prompts = [dataset.HELDOUT_PROMPTS[i] for i in (1, 21)]
  for k, i in enumerate((1, 21)):
    np.save(videos / f"{k:03d}.npy", world.render(dataset.heldout_scene(i), 17, 64, 64))
  (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
  out = tmp_path / "scores.json"
  res = _cli("--videos", str(videos), "--prompts", str(tmp_path / "prompts.txt"), "--out", str(out))
  assert res.returncode == 0, res.stderr
  report = json.load(open(out))
  assert [r["prompt"] for r in report["videos"]] == prompts and report["mean_score"] >= GT_MIN
  assert "mean score" in res.stdout and "000.npy" in res.stdout

  # The held-out JSON format with a mismatched count is a usage error: exit 2, one line on stderr.
  res = _cli("--videos", str(videos), "--prompts", os.path.join(REPO, "wanjax/toyworld/heldout.json"),
             "--out", str(out))
  assert res.returncode == 2 and res.stderr.strip().startswith("error:") and "32 prompts for 2 videos" in res.stderr

  # mp4 clips with caption sidecars plus a static .npy clip, below --min-score: exit 1 (the check failed).
  data = tmp_path / "data"
  mp4s = dataset.write_dataset(data, 2, seed=9, frames=17, size=64)
  static = world.render(dataset.heldout_scene(21), 17, 64, 64)[:1].repeat(17, axis=0)
  np.save(data / "static.npy", static)
  (data / "static.txt").write_text(dataset.HELDOUT_PROMPTS[21])
  res = _cli("--videos", ",".join(mp4s + [str(data / "static.npy")]), "--out", str(out), "--min-score", "0.95")
  assert res.returncode == 1 and "is below --min-score 0.95" in res.stdout, res.stderr
  rows = json.load(open(out))["videos"]
  assert all(r["score"] >= 0.9 for r in rows[:2]), [r["terms"] for r in rows[:2]]  # lossy H.264, 4:2:0 chroma
  assert rows[2]["score"] <= 1.0 - MARGINS["static"] and rows[2]["terms"]["direction"] == 0.0
