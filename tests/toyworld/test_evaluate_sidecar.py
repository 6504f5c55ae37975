"""`python -m wanjax.toyworld.evaluate --videos outputs` reads each video's prompt from the JSON record that
`infer.sample` writes beside it (`<stem>.json`, `config.prompt`) when there is no `<stem>.txt` caption; it failed
with "no prompt" before."""

import json
import os
import subprocess
import sys

import pytest

from infer.sample import save_json
from wanjax import video
from wanjax.errors import UsageError
from wanjax.toyworld import dataset, evaluate, world

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sampled(folder, name, index):
  """An mp4 and its sidecar as `infer.sample` writes them (the sidecar abridged to a few of its fields)."""
  path = os.path.join(folder, name + ".mp4")
  video.write_video(path, world.render(dataset.heldout_scene(index), 17, 64, 64), fps=16)
  save_json(os.path.join(folder, name + ".json"), {
      "config": {"prompt": dataset.HELDOUT_PROMPTS[index], "negative_prompt": "", "seed": 7}, "seed": 7,
      "outputs": {"video": path}, "frames": 17})
  return path


def test_cli_scores_a_sampler_folder_with_the_sidecar_prompts(tmp_path):
  out = tmp_path / "outputs"
  out.mkdir()
  _sampled(str(out), "toyworld_7_20260101_000000", 1)
  _sampled(str(out), "toyworld_8_20260101_000001", 21)
  report = tmp_path / "scores.json"
  r = subprocess.run([sys.executable, "-m", "wanjax.toyworld.evaluate", "--videos", str(out), "--out", str(report)],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  rows = json.load(open(report))["videos"]
  assert [r["prompt"] for r in rows] == [dataset.HELDOUT_PROMPTS[1], dataset.HELDOUT_PROMPTS[21]]
  assert all(r["score"] >= 0.9 for r in rows), [r["terms"] for r in rows]   # lossy H.264 of the ground truth


def test_txt_caption_comes_first_and_bad_sidecars_are_one_line(tmp_path):
  mp4 = _sampled(str(tmp_path), "a", 3)
  assert evaluate.read_prompts(None, [mp4]) == [dataset.HELDOUT_PROMPTS[3]]
  (tmp_path / "a.txt").write_text(dataset.HELDOUT_PROMPTS[4] + "\n")
  assert evaluate.read_prompts(None, [mp4]) == [dataset.HELDOUT_PROMPTS[4]]
  os.unlink(tmp_path / "a.txt")
  (tmp_path / "a.json").write_text(json.dumps({"request": {"prompt": dataset.HELDOUT_PROMPTS[5]}}))  # infer.serve
  assert evaluate.read_prompts(None, [mp4]) == [dataset.HELDOUT_PROMPTS[5]]
  (tmp_path / "a.json").write_text(json.dumps({"config": {"steps": 4}}))
  with pytest.raises(UsageError, match=r"a\.json holds no prompt \(config\.prompt or request\.prompt\)"):
    evaluate.read_prompts(None, [mp4])
  (tmp_path / "a.json").write_text("{not json")
  with pytest.raises(UsageError, match=r"a\.json: not a readable JSON sidecar"):
    evaluate.read_prompts(None, [mp4])
  os.unlink(tmp_path / "a.json")
  with pytest.raises(UsageError, match=r"no prompt for .*a\.mp4: give --prompts, put the caption in .*a\.txt"):
    evaluate.read_prompts(None, [mp4])
