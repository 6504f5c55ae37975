"""Toy world: prompt ↔ scene, rendering geometry (against the analytic areas and motion), determinism, the held-out
set, the tokenizer file through `wanjax.text.tokenize`, and dataset folders."""

import json
import math
import os

import numpy as np
import pytest

from wanjax.errors import UsageError
from wanjax.text.tokenize import Tokenizer
from wanjax.text.umt5 import PRESETS as UMT5_PRESETS
from wanjax.toyworld import dataset, vocab, world

AREA_RTOL = 0.04        # anti-aliased coverage sum vs the analytic area (pixel-sized corners of small diamonds)
CENTROID_TOL_PX = 0.1   # coverage centroid vs the analytic trajectory (vertex anti-aliasing of triangles)


def _scenes(n, seed=0):
  rng = np.random.default_rng(seed)
  return [world.sample_scene(rng) for _ in range(n)]


def test_prompt_scene_round_trip():
  for scene in _scenes(60):
    text = world.prompt_for(scene)
    assert world.parse_prompt(text) == scene.spec(), text
  for text in dataset.HELDOUT_PROMPTS:
    assert world.prompt_for(world.parse_prompt(text)) == text


def test_parse_variants_and_defaults():
  s = world.parse_prompt("A Large BLUE square moves  left and up quickly.")
  assert s == world.Scene(objects=(world.SceneObject("square", "blue", "large", "up and left", "quickly"),))
  s = world.parse_prompt("a small red circle moves left while a large green triangle moves down on a black "
                         "background")
  assert [o.speed for o in s.objects] == ["slowly", "slowly"] and s.background == "black"
  assert world.prompt_for(s) == ("a small red circle moves left slowly while a large green triangle moves down "
                                 "slowly on a black background")


@pytest.mark.parametrize("text, needle", [
    ("a small red circle jumps left", "jumps"),
    ("a small red circle moves", "expected a direction"),
    ("a red circle moves left", "expected a size"),
    ("a small red circle moves left while a large red square moves up", "different colours"),
    ("a small red circle moves left while a small blue circle moves up while a small green circle moves up",
     "1 to 2"),
    ("a small red circle moves left and right", "second half of a diagonal"),
    ("a small red circle moves left on a white background", "background colour"),
    ("a small red circle moves left slowly quickly", "unexpected word"),
    ("", "empty"),
])
def test_parse_errors(text, needle):
  with pytest.raises(UsageError, match=needle) as e:
    world.parse_prompt(text)
  if needle == "jumps":  # unknown words list the whole vocabulary
    for w in vocab.WORDS:
      assert w in str(e.value)


def _analytic_centroid(o, u, side):
  x, y = o.position(u)
  if o.shape == "triangle":  # centroid sits a third of the half-height below the box centre
    y = y + o.half_extent[1] / 3.0
  return x * side, y * side


@pytest.mark.parametrize("frames, height, width", [(17, 64, 64), (33, 96, 96), (17, 64, 96)])
def test_render_geometry(frames, height, width):
  scenes = _scenes(6, seed=frames + width)
  side = min(height, width)
  ox, oy = (width - side) / 2, (height - side) / 2
  ys, xs = np.mgrid[0:height, 0:width] + 0.5
  for scene in scenes:
    video = world.render(scene, frames, height, width)
    assert video.shape == (frames, height, width, 3) and video.dtype == np.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert np.array_equal(video[:, 0, 0], np.tile(np.float32(world.BACKGROUNDS[scene.background]), (frames, 1)))
    u = np.arange(frames) / (frames - 1)
    for o in scene.objects:
      cov = world.coverage(o, frames, height, width)
      area = cov.sum(axis=(1, 2))  # a fully visible object keeps its whole area in every frame
      np.testing.assert_allclose(area, o.area * side ** 2, rtol=AREA_RTOL)
      cx, cy = _analytic_centroid(o, u, side)
      np.testing.assert_allclose((cov * xs).sum(axis=(1, 2)) / area, cx + ox, atol=CENTROID_TOL_PX)
      np.testing.assert_allclose((cov * ys).sum(axis=(1, 2)) / area, cy + oy, atol=CENTROID_TOL_PX)
      # The pixel under the first-frame centroid is the pure object colour.
      i, j = int(cy[0] + oy), int(cx[0] + ox)
      np.testing.assert_array_equal(video[0, i, j], np.float32(world.COLOURS[o.colour]))


def test_placement_keeps_objects_inside_and_apart():
  u = np.linspace(0, 1, 33)
  for scene in _scenes(200, seed=3):
    for o in scene.objects:
      x, y = o.position(u)
      hx, hy = o.half_extent
      assert np.all(x - hx >= world.MARGIN - 1e-9) and np.all(x + hx <= 1 - world.MARGIN + 1e-9)
      assert np.all(y - hy >= world.MARGIN - 1e-9) and np.all(y + hy <= 1 - world.MARGIN + 1e-9)
    if len(scene.objects) == 2:
      a, b = scene.objects
      video = [world.coverage(o, 17, 64, 64) for o in scene.objects]
      assert np.max(video[0] * video[1]) == 0.0, world.prompt_for(scene)  # never overlapping


def test_determinism_by_seed():
  a = world.sample_scene(np.random.default_rng(7))
  b = world.sample_scene(7)
  assert a == b
  assert np.array_equal(world.render(a, 17, 64, 64), world.render(b, 17, 64, 64))
  assert world.sample_scene(8) != a
  spec = world.parse_prompt("a small red circle moves left")
  assert world.place(spec, 11) == world.place(spec, 11) != world.place(spec, 12)


def test_render_rejects_bad_sizes_and_unplaced_scenes():
  scene = world.sample_scene(0)
  for frames, h, w in [(16, 64, 64), (17, 60, 64), (17, 64, 16)]:
    with pytest.raises(UsageError, match="4k\\+1|multiple of 16"):
      world.render(scene, frames, h, w)
  with pytest.raises(UsageError, match="place"):
    world.render(scene.spec(), 17, 64, 64)


def test_heldout_set_is_reproducible_and_excluded():
  assert len(dataset.HELDOUT_PROMPTS) == 32 == len(set(dataset.HELDOUT_PROMPTS))
  assert list(dataset.HELDOUT_PROMPTS) == dataset.make_heldout_prompts()
  counts = [len(world.parse_prompt(p).objects) for p in dataset.HELDOUT_PROMPTS]
  assert counts.count(1) == counts.count(2) == 16
  # Exclusion works by prompt text: excluding the prompt a seed would draw forces another one.
  drawn = world.prompt_for(world.sample_scene(5))
  assert world.prompt_for(world.sample_scene(5, exclude={drawn})) != drawn


def test_tokenizer_file_through_wanjax_text(tmp_path):
  path = vocab.write_tokenizer(tmp_path)
  assert vocab.read_vocab(path) == vocab.VOCAB
  assert vocab.VOCAB_SIZE <= UMT5_PRESETS["tiny"].vocab
  assert [vocab.VOCAB[s] for s in (vocab.PAD, vocab.EOS, vocab.UNK)] == [0, 1, 2]
  tok = Tokenizer(str(tmp_path), max_length=20)
  text = "a large blue square moves up quickly while a small yellow triangle moves right"
  ids, mask = tok([text, "A Small RED circle jumps left."])
  words = text.split()
  expected = [vocab.VOCAB[w] for w in words] + [1]
  assert ids[0].tolist() == expected + [0] * (20 - len(expected))
  assert mask[0].tolist() == [1] * len(expected) + [0] * (20 - len(expected))
  # Lower-cased; the unknown word maps to <unk>; '.' is a word; </s> closes the sequence.
  assert ids[1, :8].tolist() == [vocab.VOCAB[w] for w in ("a", "small", "red", "circle")] + [2] + [
      vocab.VOCAB["left"], vocab.VOCAB["."], 1]
  assert mask[1].sum() == 8


def test_write_dataset_npy(tmp_path):
  paths = dataset.write_dataset(tmp_path, 3, seed=4, frames=17, size=64, fmt="npy")
  meta = json.load(open(tmp_path / "scenes.json"))
  assert [os.path.basename(p) for p in paths] == ["000000.npy", "000001.npy", "000002.npy"]
  assert os.path.isfile(tmp_path / "tokenizer.json")
  for path, clip in zip(paths, meta["clips"]):
    caption = open(path[:-4] + ".txt").read()
    scene = dataset.scene_from_json(clip["scene"])
    assert caption == clip["prompt"] == world.prompt_for(scene)
    assert caption not in dataset.HELDOUT_PROMPTS
    np.testing.assert_array_equal(np.load(path), world.render(scene, 17, 64, 64))
  # Prefix-stable: a smaller dataset with the same seed is the first clips of a larger one.
  again = dataset.write_dataset(tmp_path / "b", 2, seed=4, frames=17, size=64, fmt="npy")
  np.testing.assert_array_equal(np.load(again[1]), np.load(paths[1]))
  with pytest.raises(UsageError, match="fmt"):
    dataset.write_dataset(tmp_path, 1, fmt="gif")


def test_write_dataset_mp4(tmp_path):
  from wanjax.video import read_video
  paths = dataset.write_dataset(tmp_path, 1, seed=1, frames=17, size=64)
  frames, _ = read_video(paths[0])
  scene = dataset.scene_from_json(json.load(open(tmp_path / "scenes.json"))["clips"][0]["scene"])
  ref = (world.render(scene, 17, 64, 64) + 1) * 127.5
  assert frames.shape == (17, 64, 64, 3)
  # H.264 at quality 8 with 4:2:0 chroma: close on average, not exact.
  assert math.isclose(np.mean(np.abs(frames - ref)), 0.0, abs_tol=6.0)
