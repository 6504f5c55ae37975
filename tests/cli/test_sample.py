"""`python -m infer.sample` end to end on the tiny preset (random tiny DiT + VAE), plus the edge errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from wanjax import video

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = "configs/sample/tiny.py"


def _run(*flags, config=TINY, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "infer.sample", f"--config={config}", *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_tiny_end_to_end_with_hooks(tmp_path):
  """2 UniPC steps with CFG on the data axis; init_noise/text_embeddings/save_latents hooks; mp4 + sidecar."""
  rng = np.random.default_rng(0)
  noise = rng.standard_normal((16, 2, 4, 6)).astype(np.float32)        # torch layout [C, F, H, W]
  np.save(tmp_path / "noise.npy", noise)
  np.savez(tmp_path / "emb.npz", context=rng.standard_normal((5, 20)).astype(np.float32),
           negative_context=rng.standard_normal((1, 3, 20)).astype(np.float32))
  out = tmp_path / "out"
  r = _run(f"--config.output_dir={out}", "--config.output_name=clip",
           f"--config.init_noise={tmp_path / 'noise.npy'}", f"--config.text_embeddings={tmp_path / 'emb.npz'}",
           f"--config.save_latents={tmp_path / 'lat.npy'}", "--config.mesh=data=2", "--config.save_frames=True",
           config=f"{TINY}:steps=2")
  assert r.returncode == 0, r.stderr[-3000:]
  frames, fps = video.read_video(out / "clip.mp4")
  assert frames.shape == (5, 32, 48, 3) and fps == 16.0
  assert frames.std() > 1.0, "decoded video should not be constant"
  assert sorted(os.listdir(out / "clip_frames")) == [f"{i:05d}.png" for i in range(5)]
  side = json.loads((out / "clip.json").read_text())
  assert side["seed"] == 42 and side["frames"] == 5 and side["width"] == 48 and side["height"] == 32
  assert side["config"]["num_steps"] == 2 and side["cfg"] is True and side["mesh"]["data"] == 2
  assert set(side["timings"]) >= {"text_encode_s", "compile_s", "denoise_s", "decode_s"}
  assert len(side["timesteps"]) == 2 and side["sigmas"][-1] == 0.0
  lat = np.load(tmp_path / "lat.npy")
  assert lat.shape == (1, 16, 2, 4, 6) and np.isfinite(lat).all()
  assert np.abs(lat[0] - noise).max() > 1e-3, "the latent must have been denoised"
  assert not [f for f in os.listdir(out) if f.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize("flags,message", [
    (("--config.frames=80",), "frames=80 must be 4k+1 (e.g. 77 or 81)"),
    (("--config.size=100*100",), "size 100*100: width and height must be multiples of 16 (e.g. 96*96)"),
])
def test_usage_errors_exit_2_and_write_nothing(tmp_path, flags, message):
  out = tmp_path / "out"
  r = _run(*flags, f"--config.output_dir={out}")
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
  assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
  assert not out.exists()


@pytest.mark.parametrize("override,message", [
    (dict(solver="karras"), "unknown solver 'karras'"),
    (dict(random_init=False), "weights is required"),
    (dict(model="tiny_i2v"), "image is required"),
    (dict(init_noise="/nonexistent/noise.npy"), "does not exist"),
    (dict(cfg_scale=0.5), "cfg_scale=0.5 must be >= 1"),
    (dict(solver="euler"), "needs a step list"),
    (dict(size="48x"), "must be W*H"),
    (dict(frames=16), "frames=16 must be 4k+1 (e.g. 13 or 17)"),
    (dict(size="60*70"), "size 60*70: width and height must be multiples of 16 (e.g. 64*64)"),
])
def test_edge_checks(override, message):
  """The same checks in-process (each CLI start costs seconds): every one raises UsageError naming the value."""
  from configs.sample import tiny
  from infer.sample import check
  from wanjax.errors import UsageError
  c = tiny.get_config()
  c.update(override)
  with pytest.raises(UsageError, match=re.escape(message)):
    check(c)


@pytest.mark.parametrize("preset", ["t2v_1_3b", "t2v_14b", "i2v_14b_480p", "i2v_14b_720p", "lightx2v_4step",
                                    "tiny"])
def test_presets_build(preset):
  import importlib
  c = importlib.import_module(f"configs.sample.{preset}").get_config()
  assert c.frames == (5 if preset == "tiny" else 81)
  expect = {"t2v_1_3b": ("unipc", 50, 5.0, 5.0, "832*480"), "t2v_14b": ("unipc", 50, 5.0, 5.0, "1280*720"),
            "i2v_14b_480p": ("unipc", 40, 3.0, 5.0, "832*480"), "i2v_14b_720p": ("unipc", 40, 5.0, 5.0, "1280*720"),
            "lightx2v_4step": ("consistency", 4, 5.0, 1.0, "832*480"), "tiny": ("unipc", 3, 5.0, 5.0, "48*32")}
  assert (c.solver, c.num_steps, c.shift, c.cfg_scale, c.size) == expect[preset]


def test_preset_args():
  from configs.sample import lightx2v_4step
  from wanjax.errors import UsageError
  c = lightx2v_4step.get_config("model=i2v_14b,euler")
  assert c.model == "i2v_14b" and c.solver == "euler" and c.timesteps == (1000, 750, 500, 250)
  with pytest.raises(UsageError, match="unknown config arg 'modle'"):
    lightx2v_4step.get_config("modle=i2v_14b")


def test_wrong_model_type_for_preset(tmp_path):
  """An I2V checkpoint under a T2V preset fails at the edge, before anything is loaded."""
  from wanjax.dit.config import get_config
  ckpt = tmp_path / "i2v_ckpt"
  ckpt.mkdir()
  d = get_config("tiny_i2v").to_json_dict()
  d["family"] = "dit"
  (ckpt / "config.json").write_text(json.dumps(d))
  (ckpt / "model.safetensors").write_bytes(b"")
  r = _run("--config.random_init=False", f"--config.weights={ckpt}", f"--config.output_dir={tmp_path / 'out'}")
  assert r.returncode == 2
  assert "hold a 'i2v' DiT but model='tiny' expects 't2v'" in r.stderr


def test_cfg_on_distilled_preset_warns(tmp_path):
  """CFG > 1 on a distilled preset is a warning (logged), not an error; the run then stops at missing weights."""
  r = _run("--config.cfg_scale=5.0", f"--config.output_dir={tmp_path}", config="configs/sample/lightx2v_4step.py")
  assert r.returncode == 2 and "weights is required" in r.stderr
  assert "CFG > 1 tends to blur" in r.stderr


@pytest.mark.parametrize("argv,message", [
    (["--config.framez=5"], "--config.framez: the preset has no field 'framez'; did you mean 'frames'?"),
    ([f"--config={TINY}:stepz=2"], "unknown config arg 'stepz'; valid: i2v, solver, steps"),
    (["--config=configs/sample/nope.py"], "cannot load the preset file ([Errno 2] No such file"),
    ([f"--config={TINY}", "--config.seed=abc"], "--config.seed=abc: invalid literal"),
])
def test_flag_and_preset_errors_are_one_line(argv, message):
  """Typos in `--config.<field>` (also on the default preset, parsed as the flag is defined), preset args and
  preset paths: one `error:` line and exit 2, as every other usage error; no traceback."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-m", "infer.sample", *argv], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
  assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]


def test_output_conflicts_fail_before_writing(tmp_path):
  """An earlier run's frame folder under the same output_name: exit 2 before sampling, its files untouched
  (the run used to replace the mp4, then fail on the folder, leaving a stale sidecar and a temp folder)."""
  out = tmp_path / "out"
  (out / "clip_frames").mkdir(parents=True)
  (out / "clip.mp4").write_bytes(b"earlier")
  r = _run(f"--config.output_dir={out}", "--config.output_name=clip", "--config.save_frames=True")
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  assert "clip_frames' already exists" in r.stderr
  assert (out / "clip.mp4").read_bytes() == b"earlier"
  assert sorted(os.listdir(out)) == ["clip.mp4", "clip_frames"]


@pytest.mark.parametrize("where,message", [
    ("output_dir", "is a file; pass another output_dir"),
    ("save_latents", "is a file; pass another save_latents folder"),
    ("mp4_folder", "is a folder; pass another output_name"),
    ("latents_folder", "is a folder; pass a file name ending in .npy"),
])
def test_check_outputs(tmp_path, where, message):
  """Output paths that cannot be written are found at the edge (in-process: no CLI start)."""
  from configs.sample import tiny
  from infer.sample import check_outputs
  from wanjax.errors import UsageError
  c = tiny.get_config()
  blocker = tmp_path / "file"
  blocker.write_text("x")
  out = tmp_path / "out"
  check_outputs(c, str(out), "clip")   # a missing folder is fine: it is created when writing
  if where == "output_dir":
    out = blocker / "sub"
  elif where == "save_latents":
    c.save_latents = str(blocker / "lat.npy")
  elif where == "mp4_folder":
    (out / "clip.mp4").mkdir(parents=True)
  else:
    c.save_latents = str(tmp_path)
  with pytest.raises(UsageError, match=re.escape(message)):
    check_outputs(c, str(out), "clip")


@pytest.mark.parametrize("prompt,grammar,message", [
    ("A cat surfing a wave", "toyworld", "has words outside the toy-world vocabulary: cat, surfing, wave"),
    ("a large red circle moves", "toyworld", "expected a direction"),
    ("a large red circle moves left quickly", "toyworld", None),
    ("A cat surfing a wave", "", None),
    ("a red circle", "lego", "prompt_grammar='lego'; valid: '', 'toyworld'"),
])
def test_toyworld_prompt_grammar(prompt, grammar, message):
  """The toy world's umT5 knows 32 words: other prompts would be sampled as a row of <unk> tokens."""
  from configs.sample import toyworld
  from infer.sample import check
  from wanjax.errors import UsageError
  c = toyworld.get_config()
  assert c.prompt_grammar == "toyworld"
  c.prompt, c.prompt_grammar = prompt, grammar
  if message is None:
    check(c)
  else:
    with pytest.raises(UsageError, match=re.escape(message)):
      check(c)


def test_progress_bar_spans_the_denoise_loop_only():
  """`Pipeline.generate` calls on_denoise_start once, after compiling and before the first step, so the CLI's
  tqdm bar measures denoising alone (it used to include text encoding, loading, compiling and decoding)."""
  from configs.sample import tiny
  from infer.sample import Pipeline, check
  from wanjax import sharding
  c = tiny.get_config("steps=2")
  c.cfg_scale = 1.0
  plan = check(c)
  events, timings = [], {}
  Pipeline(c, sharding.make_mesh(""), keep_encoders=False).generate(
      c, plan, seed=0, progress=lambda i: events.append(("step", int(i))), timings=timings,
      on_denoise_start=lambda: events.append(("start", sorted(timings))))
  assert events[0] == ("start", ["compile_s", "load_s", "text_encode_s"]), events
  assert sorted(events[1:]) == [("step", 0), ("step", 1)], events
  assert "denoise_s" in timings and "decode_s" in timings


def test_png_frames_never_leave_a_partial_or_temp_folder(tmp_path, monkeypatch):
  """`write_png_frames` publishes the folder whole or not at all: an existing target fails before anything is
  written, and a failure while writing (here the disk filling up at frame 2) removes its temporary folder."""
  import imageio.v3 as iio
  import numpy as np
  from wanjax import video
  from wanjax.errors import UsageError
  frames = np.zeros((3, 16, 16, 3), np.float32)
  (tmp_path / "clip_frames").mkdir()
  with pytest.raises(UsageError, match="already exists"):
    video.write_png_frames(str(tmp_path / "clip_frames"), frames)
  assert sorted(os.listdir(tmp_path)) == ["clip_frames"]
  real = iio.imwrite

  def imwrite(path, f):
    if path.endswith("00002.png"):
      raise OSError(28, "No space left on device")
    return real(path, f)
  monkeypatch.setattr(iio, "imwrite", imwrite)
  with pytest.raises(OSError, match="No space"):
    video.write_png_frames(str(tmp_path / "other"), frames)
  assert sorted(os.listdir(tmp_path)) == ["clip_frames"]   # neither "other" nor a ".other.*" temp folder
