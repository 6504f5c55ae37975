"""`infer.sample` off the beaten path (an audit of I2V inputs, step lists, seeds, solvers and the AR edge):
image files as the reference reads them (`Image.open().convert("RGB")`), the sidecar's step count, seed=-1
with random models, UniPC refused where it would return NaN, and the AR checks that must fire before any model
is built, with the AR sidecar holding every field of the plain one. In-process on the tiny presets."""

import importlib
import json
import logging

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest

from configs.sample import self_forcing, tiny
from infer import sample as S
from wanjax import sampling, sampling_ar, schedules
from wanjax.errors import UsageError
from wanjax.solvers import get_solver

H0, W0 = 6, 10
PIXEL_TOL = 1e-6   # an 8-bit image and its 16-bit copy (v·257) decode to the same [−1, 1] values


@pytest.fixture(scope="module")
def rgb():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (H0, W0, 3), dtype=np.uint8)


def test_image_files_decode_as_the_reference(rgb, tmp_path):
  """16-bit PNGs scale by 65535 (were /255: values up to 513), grey+alpha becomes grey RGB (was 2 channels),
  RGBA drops alpha, an animated GIF gives its first frame (was a 4-d array)."""
  want = rgb.astype(np.float32) / 127.5 - 1.0
  grey = rgb[..., 0]
  iio.imwrite(tmp_path / "g8.png", grey)
  iio.imwrite(tmp_path / "g16.png", grey.astype(np.uint16) * 257)
  iio.imwrite(tmp_path / "la.png", np.stack([grey, np.full_like(grey, 7)], -1))
  iio.imwrite(tmp_path / "rgba.png", np.concatenate([rgb, np.full_like(rgb[..., :1], 9)], -1))
  pal = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)   # exact in a GIF palette
  frame0 = pal[np.arange(H0 * W0).reshape(H0, W0) % 4]
  iio.imwrite(tmp_path / "anim.gif", np.stack([frame0, frame0[::-1, ::-1]]))
  g8 = S._load_image(str(tmp_path / "g8.png"))
  assert g8.shape == (H0, W0, 3) and np.array_equal(g8[..., 0], g8[..., 2])
  assert np.abs(S._load_image(str(tmp_path / "g16.png")) - g8).max() <= PIXEL_TOL
  assert np.abs(S._load_image(str(tmp_path / "la.png")) - g8).max() <= PIXEL_TOL
  assert np.abs(S._load_image(str(tmp_path / "rgba.png")) - want).max() <= PIXEL_TOL
  gif = S._load_image(str(tmp_path / "anim.gif"))
  assert gif.shape == (H0, W0, 3) and np.abs(gif - (frame0 / 127.5 - 1.0)).max() <= PIXEL_TOL


def _presets():
  """Every sampling preset variant: (name, config)."""
  out = []
  for name in ("t2v_1_3b", "t2v_14b", "i2v_14b_480p", "i2v_14b_720p", "lightx2v_4step", "self_forcing", "causvid",
               "causvid_lightx2v"):
    out.append((name, importlib.import_module(f"configs.sample.{name}").get_config()))
  for arg in ("solver=consistency,steps=4", "solver=euler,steps=2", "steps=3"):
    out.append((f"tiny:{arg}", tiny.get_config(arg)))
  from configs.sample import toyworld
  for model in toyworld.MODELS:
    out.append((f"toyworld:{model}", toyworld.get_config(f"model={model}")))
  return out


def test_step_list_presets_state_the_steps_they_run():
  """The sidecar's config must not claim num_steps=50 for a 4-step list (toyworld dmd did)."""
  for name, c in _presets():
    if c.timesteps:
      assert c.num_steps == len(c.timesteps), name


def test_ignored_num_steps_warns(caplog):
  c = tiny.get_config("solver=consistency,steps=4")
  c.num_steps = 2
  caplog.set_level(logging.WARNING)
  plan = S.check(c)
  assert len(plan.timesteps) == 4
  assert any("num_steps=2 is ignored" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
  """One tiny 1-step run with seed=-1 (crashed: random_init models seeded with -1)."""
  d = tmp_path_factory.mktemp("plain")
  c = tiny.get_config("solver=consistency,steps=1")
  c.frames, c.seed, c.output_dir, c.output_name = 1, -1, str(d), "a"
  c.save_latents = str(d / "a.npy")
  return c, S.run(c), np.load(d / "a.npy")


def test_drawn_seed_reproduces_the_run(plain_run, tmp_path):
  c, side, lat = plain_run
  assert side["seed"] >= 0 and side["config"]["seed"] == side["seed"] and side["num_steps"] == 1
  c2 = tiny.get_config("solver=consistency,steps=1")
  c2.frames, c2.seed, c2.output_dir, c2.output_name = 1, side["seed"], str(tmp_path), "b"
  c2.save_latents = str(tmp_path / "b.npy")
  S.run(c2)
  np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), lat)


def test_unipc_from_sigma_one_is_refused():
  """UniPC from σ = 1 (t = 1000) returns NaN at its third step (log-SNR −∞); every entry refuses it."""
  sig, ts = schedules.step_list_sigmas((1000, 750, 500), 5.0)
  solver, x = get_solver("unipc"), jnp.ones((1, 2))
  state = solver.init_state(x)
  for i in range(3):            # the reason: the raw step turns NaN
    x, state = solver.step(state, x, 0.5 * x, i, jnp.asarray(sig))
  assert not np.isfinite(np.asarray(x)).all()
  with pytest.raises(UsageError, match="cannot start at sigma 1"):
    sampling.sample(lambda p, x, t, c: x, jnp.ones((1, 1, 2, 2, 16)), sigmas=sig, timesteps=ts, solver="unipc",
                    cond={"context": jnp.zeros((1, 7, 20))})
  c = tiny.get_config("steps=3")
  c.timesteps = (1000, 750, 500)
  with pytest.raises(UsageError, match="cannot start at sigma 1"):
    S.check(c)
  with pytest.raises(UsageError, match="cannot start at sigma 1"):
    sampling_ar.AROptions(update="unipc").validate()
  c.timesteps = (999, 750, 500)                  # just below 1: allowed (causvid_lightx2v's list)
  S.check(c)
  sampling_ar.AROptions(update="unipc", steps=(999, 750, 500), warp=False, sigma_lookup="exact").validate()
  sampling_ar.AROptions(update="unipc", steps=(1000, 500)).validate()   # 2 steps never reach the corrector


def test_nonfinite_latent_warns(caplog):
  """A NaN latent used to be written as a black mp4 with exit 0 and nothing logged."""
  caplog.set_level(logging.WARNING)
  assert S.warn_nonfinite(np.zeros((1, 2, 3))) == 0 and not caplog.records
  assert S.warn_nonfinite(np.array([np.nan, 1.0, np.inf])) == 2
  assert any("2 non-finite values" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("arg,overrides,message", [
    ("", {"frames": 161}, "frames=161 gives 41 latent frames, not a multiple of ar.frames_per_block=3; use frames "
                          "= 1 + 4·(k·3 − 1), e.g. 153 or 165"),
    ("", {"frames": 93}, "more than the KV cache of ar.cache_frames=21; use frames <= 81"),
    ("", {"ar.sink_frames": 3}, "sink_frames=3 is only used by a rolling cache"),
    ("", {"guidance": 3.0}, "guidance=3.0: the AR samplers run no guidance embedding"),
    ("rollouts", {"frames": 17}, "gives 5 latent frames per rollout, not a multiple"),
    ("rollouts", {"ar.overlap_frames": 6}, "6 latent frames per rollout, no more than ar.overlap_frames=6"),
    ("fragments", {"frames": 9}, "3 latent frames per fragment, one block of 3: later fragments would add no frame"),
    ("fragments", {"frames": 17}, "5 latent frames per fragment, not a multiple"),
])
def test_ar_edge_errors_before_any_model(arg, overrides, message, tmp_path, monkeypatch):
  """Each used to fail after the DiT was built (or, for guidance, to be ignored; for overlap 6, to end in 'no
  frames were appended')."""
  from configs.sample import causvid, causvid_lightx2v
  c = {"": self_forcing.get_config, "rollouts": lambda a: causvid.get_config(a + ",rollouts=2"),
       "fragments": lambda a: causvid_lightx2v.get_config(a + ",fragments=2")}[arg]("runlocal")
  c.output_dir = str(tmp_path)
  for k, v in overrides.items():
    grp, _, key = k.rpartition(".")
    (c[grp] if grp else c)[key] = v
  monkeypatch.setattr(S, "build_dit", lambda *a, **k: pytest.fail("built the DiT before the edge error"))
  with pytest.raises(UsageError) as e:
    S.run(c)
  assert message in str(e.value)
  assert not list(tmp_path.iterdir())


def test_ar_sidecar_has_the_plain_fields(plain_run, tmp_path):
  """The AR sidecar lacked guidance, dit_weight_bytes and write_s; it holds every plain field (+ its own)."""
  c = self_forcing.get_config("runlocal,nfpb=1")   # 5 frames: 2 blocks of 1 latent frame
  c.output_dir, c.output_name = str(tmp_path), "ar"
  side = S.run(c)
  plain = plain_run[1]
  assert set(plain) - set(side) == set()
  assert set(side["timings"]) >= {"load_s", "text_encode_s", "write_s"}
  assert side["num_steps"] == len(side["timesteps"]) == 4 and side["guidance"] == 0.0
  assert side["dit_weight_bytes"] == plain["dit_weight_bytes"] > 0   # the same tiny DiT
  assert json.load(open(tmp_path / "ar.json"))["num_steps"] == 4


def test_scan_unroll_reaches_the_dit_and_keeps_its_output():
  """config.scan_unroll: the DiT the sampler builds loops over 2 layers per iteration; same velocities."""
  import jax
  outs = []
  for unroll in (1, 2):
    c = tiny.get_config("steps=3")
    c.scan_unroll = unroll
    dit = S.build_dit(c, S.check(c), None)
    assert dit.scan_unroll == unroll
    cfg = dit.cfg
    x = jax.random.normal(jax.random.key(0), (1, 2, 4, 6, cfg.in_dim))
    ctx = jax.random.normal(jax.random.key(1), (1, 5, cfg.text_dim))
    outs.append(np.asarray(dit(x, jnp.array([700.0]), ctx)))
  assert np.abs(outs[0]).max() > 0
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)
  c = tiny.get_config("steps=3")
  c.scan_unroll = 0
  with pytest.raises(UsageError, match="scan_unroll=0 must be >= 1"):
    S.check(c)
