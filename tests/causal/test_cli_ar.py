"""`infer.sample` with an AR preset (configs/sample/self_forcing.py:runlocal): injected init_noise + renoise give
bit-identical latents across runs, the mp4 holds every decoded frame, the sidecar reports calls, ttff, and the
generation throughput and the playback frame rate under separate names."""

import json
import os

import numpy as np
import pytest

from configs.sample import causvid, causvid_lightx2v, self_forcing


def test_presets_parse():
  assert causvid.get_config().ar.warp is False and causvid.get_config("rollouts=3").ar.num_segments == 3
  lx = causvid_lightx2v.get_config("fragments=2")
  assert lx.solver == "unipc" and lx.ar.context_pass is False and lx.ar.long_video == "fragments"
  assert self_forcing.get_config().timesteps == (1000, 750, 500, 250)


@pytest.mark.slow
def test_cli_ar_is_reproducible_with_injected_noise(tmp_path):
  from infer.sample import run
  from wanjax import video
  c = self_forcing.get_config("runlocal")
  f, h, w = 6, 4, 6
  rng = np.random.default_rng(0)
  np.save(tmp_path / "noise.npy", rng.standard_normal((16, f, h, w)).astype(np.float32))
  np.save(tmp_path / "renoise.npy", rng.standard_normal((2, 3, 16, 3, h, w)).astype(np.float32))
  outs = []
  for k in range(2):
    c.init_noise, c.renoise = str(tmp_path / "noise.npy"), str(tmp_path / "renoise.npy")
    c.save_latents = str(tmp_path / f"lat{k}.npy")
    c.output_dir, c.output_name = str(tmp_path), f"run{k}"
    side = run(c)
    outs.append(np.load(c.save_latents))
    assert side["model_calls"] == 2 * 5 - 1 and side["frames"] == 21 and side["timings"]["ttff_s"] > 0
    assert video.probe_video(os.path.join(tmp_path, f"run{k}.mp4"))["frames"] == 21
    assert json.load(open(tmp_path / f"run{k}.json"))["latent_shape"] == [1, f, h, w, 16]
  assert outs[0].shape == (1, 16, f, h, w)
  np.testing.assert_array_equal(outs[0], outs[1])


def test_cli_ar_sidecar_names_throughput_and_frame_rate(tmp_path):
  """The sidecar's generation throughput is `generated_frames_per_s` (frames / sampling seconds) and the mp4's
  playback rate `video_fps`; the ambiguous top-level "fps" (it held the throughput) is gone."""
  from infer.sample import run
  from wanjax import video
  c = self_forcing.get_config("runlocal")
  c.fps = 12
  c.output_dir, c.output_name = str(tmp_path), "clip"
  side = run(c)
  assert "fps" not in side and json.load(open(tmp_path / "clip.json")) == json.loads(json.dumps(side))
  assert side["generated_frames_per_s"] == pytest.approx(side["frames"] / side["timings"]["sampling_ar_s"], rel=1e-2)
  assert side["video_fps"] == 12.0 == video.probe_video(tmp_path / "clip.mp4")["fps"]
