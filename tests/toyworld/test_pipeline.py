"""The toy-world training pipeline: VAE trainer learns, exports load, and the smoke pipeline runs end to end.

- VAE overfit: `train.vae` on a fixed batch of two clips (the real trainer on the shared loop) lowers the
  reconstruction loss, and its export loads with `load_vae` with the fitted latent statistics.
- Export: a DiT train state exported by `train.export` loads with `load_dit` and reproduces the trained params.
- Slow: `scripts/train_toyworld.py --smoke` runs every stage (dataset, VAE, text encoder, preprocessing,
  teacher, DMD, ODE pairs, ODE init, Self-Forcing, eval) and `infer.sample --config configs/sample/toyworld.py:root=<smoke checkpoints>` writes
  an mp4.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from wanjax.toyworld import dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))

OVERFIT_STEPS = 40
OVERFIT_MIN_DROP = 0.5      # the last logged L1 must be below half the first
STATS_TOL = 1e-3            # exported latent statistics vs. a direct recomputation (relative)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  d = tmp_path_factory.mktemp("toy_clips")
  dataset.write_dataset(d, 2, seed=3, frames=5, size=32, fmt="npy")
  return str(d)


@pytest.mark.slow   # ~2 min on the shared 2-core CPU (compile-bound)
def test_vae_overfits_a_fixed_batch_and_exports(clips, tmp_path):
  from configs.train import toyworld_vae
  from train import export, vae
  from train_toyworld import read_scalars
  from wanjax.vae.load import load_vae
  c = toyworld_vae.get_config("smoke=True")
  c.data.clips, c.total_steps, c.checkpoint_every, c.log_every = clips, OVERFIT_STEPS, OVERFIT_STEPS, 5
  c.mesh = "data=2"
  work = str(tmp_path / "vae")
  vae.train(c, work)
  l1 = [v for _, v in read_scalars(os.path.join(work, "tb"))["loss/l1"]]
  assert len(l1) == OVERFIT_STEPS // 5
  assert l1[-1] < OVERFIT_MIN_DROP * l1[0], l1

  summary = export.export(c, work, str(tmp_path / "vae_dir"))
  assert summary["step"] == OVERFIT_STEPS and summary["clips"] == 2
  model = load_vae(str(tmp_path / "vae_dir"))
  # The fitted statistics make the exported encoder's latents zero-mean, unit-std per channel on its data.
  video = vae.to_video(vae.load_clips(clips, frames=5, size=32))
  z = np.asarray(model.encode(video)).reshape(-1, c.vae.z_dim)
  np.testing.assert_allclose(z.mean(0), 0.0, atol=STATS_TOL)
  np.testing.assert_allclose(z.std(0), 1.0, rtol=STATS_TOL)
  # Decoding undoes the normalisation: the round trip equals the raw (identity-normalised) autoencoder's.
  step, state = export.restore_trained(work)
  raw_cfg = vae.vae_config(c.vae)
  raw = export.module_from_params(lambda: vae.WanVAE(raw_cfg, rngs=nnx.Rngs(0)), export.trained_params(state))
  want = np.asarray(raw.decode(raw.encode(video)))
  got = np.asarray(model.decode(model.encode(video)))
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_dit_export_loads_with_load_dit(tmp_path):
  from configs.train import toyworld_teacher
  from train import export, flow_matching
  from wanjax.dit.load import load_dit
  c = toyworld_teacher.get_config("smoke=True")
  c.data.random_contexts, c.total_steps, c.checkpoint_every = 3, 2, 2
  c.mesh = "fsdp=2"   # sharded params: the export must gather them
  work = str(tmp_path / "fm")
  final = flow_matching.train(c, work)
  export.export(c, work, str(tmp_path / "dit"))
  dit = load_dit(str(tmp_path / "dit"))
  got = nnx.to_pure_dict(nnx.state(dit, nnx.Param))
  want = jax.device_get(final.generator.params)
  leaves = jax.tree_util.tree_leaves_with_path(want)
  assert len(leaves) == len(jax.tree.leaves(got))
  for path, w in leaves:
    g = got
    for k in path:
      g = g[k.key]
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=jax.tree_util.keystr(path))
  with open(tmp_path / "dit" / "config.json") as f:
    assert json.load(f)["family"] == "dit"


@pytest.mark.slow
def test_smoke_pipeline_and_sample_cli(tmp_path):
  work = tmp_path / "tw"
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train_toyworld.py"), "--smoke",
                         "--work", str(work), "--eval_seeds", "2"], cwd=REPO, capture_output=True, text=True,
                        timeout=1500)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  ckpt = work / "checkpoints"
  with open(ckpt / "train_log.json") as f:
    log = json.load(f)
  for stage in ("data", "vae", "text", "features", "teacher", "dmd", "dmd2", "dmd1", "odepairs", "ode", "sf", "eval"):
    assert stage in log["stages"], stage
  for stage, key in (("vae", "loss/vae"), ("teacher", "loss/flow"), ("dmd", "loss/critic"),
                     ("dmd2", "loss/critic"), ("dmd1", "loss/critic"), ("ode", "loss/ode"), ("sf", "loss/critic")):
    assert np.isfinite(log["stages"][stage]["losses"][key]["last"])
  assert set(log["eval"]) == {"teacher", "teacher4", "teacher2", "teacher1", "teacher_dmd_sampler", "dmd", "dmd2",
                              "dmd1", "sf"}
  # The eval stage's seconds include each row's sampling, not only its scoring.
  assert log["stages"]["eval"]["seconds"] >= 0.9 * sum(row["wall_s"] for row in log["eval"].values())
  for name, row in log["eval"].items():
    assert 0.0 <= row["mean_score"] <= 1.0, name
    assert row["seeds_per_prompt"] == 2 and len(row["per_video"]) == 2 * row["prompts"], name
    assert name == "teacher" or np.isfinite(row["vs_teacher"]["mean_diff"]), name

  out = tmp_path / "sample"
  proc = subprocess.run([sys.executable, "-m", "infer.sample", "--config",
                         f"configs/sample/toyworld.py:root={ckpt}", "--config.size=32*32", "--config.frames=5",
                         f"--config.output_dir={out}", "--config.output_name=clip"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  from wanjax.video import read_video
  frames, _ = read_video(str(out / "clip.mp4"))
  assert frames.shape == (5, 32, 32, 3)


def test_foreground_weights_mark_pixels_off_the_background():
  import jax.numpy as jnp
  from train.vae import foreground_weights
  video = np.full((2, 3, 8, 8, 3), -1.0, np.float32)          # black background
  video[1] = np.array([0.0, -0.5, 0.2], np.float32)            # another clip: another plain colour
  video[0, :, 2:4, 5:7] = np.array([1.0, 1.0, -1.0])           # a yellow object (8 % of the pixels)
  video[1, 1, 0, 0] += np.array([0.05, 0.0, 0.0])              # below the 0.1 threshold: background
  w = np.asarray(foreground_weights(jnp.asarray(video), 10.0))[..., 0]
  want = np.ones(w.shape, np.float32)
  want[0, :, 2:4, 5:7] = 11.0
  np.testing.assert_array_equal(w, want)


def test_paired_vs_teacher_statistics():
  from train_toyworld import paired_vs_teacher
  t = [0.5, 0.4, 0.3, 0.6]
  scores = {"teacher": {"per_video": t, "seed": 0},
            "dmd": {"per_video": [0.6, 0.4, 0.5, 0.6], "seed": 0},
            "other_seed": {"per_video": [0.6, 0.4, 0.5, 0.6], "seed": 7},
            "short": {"per_video": [0.6, 0.4], "seed": 0}}
  assert paired_vs_teacher(scores) == {"dmd"}        # the only row whose statistics changed
  d = np.array([0.1, 0.0, 0.2, 0.0])
  got = scores["dmd"]["vs_teacher"]
  assert got["mean_diff"] == pytest.approx(d.mean(), abs=1e-4)
  assert got["se_diff"] == pytest.approx(d.std(ddof=1) / 2.0, abs=1e-4)
  assert got["ratio"] == pytest.approx(2.1 / 1.8, abs=1e-4)
  # Rows not sampled on the teacher's (prompt, seed) pairs get no paired statistics.
  assert "vs_teacher" not in scores["other_seed"] and "vs_teacher" not in scores["short"]
  assert "vs_teacher" not in scores["teacher"]
  assert paired_vs_teacher(scores) == set()           # unchanged on a second pass
  scores["teacher"]["per_video"] = [0.4, 0.4, 0.3, 0.6]   # a re-evaluated teacher updates the other rows
  assert paired_vs_teacher(scores) == {"dmd"} and scores["dmd"]["vs_teacher"]["ratio"] == pytest.approx(2.1 / 1.7,
                                                                                                        abs=1e-4)
  assert paired_vs_teacher({"dmd": scores["dmd"]}) == set()   # no teacher row: nothing to pair with


def test_toyworld_preset_step_variants():
  from configs.sample import toyworld
  from wanjax.errors import UsageError
  for model, steps in (("teacher", 50), ("teacher4", 4), ("teacher2", 2), ("teacher1", 1)):
    c = toyworld.get_config(f"model={model}")
    assert (c.num_steps, c.cfg_scale, os.path.basename(c.weights)) == (steps, 4.0, "teacher"), model
  for model, steps in (("dmd", (1000, 750, 500, 250)), ("dmd2", (1000, 500)), ("dmd1", (1000,))):
    c = toyworld.get_config(f"model={model}")
    assert (tuple(c.timesteps), c.cfg_scale, c.solver, os.path.basename(c.weights)) == (steps, 1.0, "consistency",
                                                                                         model)
  c = toyworld.get_config("model=teacher_dmd_sampler")   # the dmd row's sampler with the teacher's weights and CFG
  dmd = toyworld.get_config("model=dmd")
  assert (c.solver, tuple(c.timesteps), c.shift) == (dmd.solver, tuple(dmd.timesteps), dmd.shift)
  assert (c.cfg_scale, os.path.basename(c.weights), c.distilled) == (4.0, "teacher", False)
  for bad in ("teacher0", "teacher04", "dmd3", "teach"):
    with pytest.raises(UsageError, match="teacherN"):
      toyworld.get_config(f"model={bad}")


def test_toyworld_table_lists_rows_in_order_with_paired_deltas():
  from toyworld_table import table
  terms = dict(colour=0.5, shape=0.25, direction=0.75, sharpness=0.125)
  row = lambda score, **kw: dict(mean_score=score, accuracy=0.0, mean_terms=terms, seconds_per_video=0.5, **kw)  # noqa: E731
  ev = {"sf": row(0.3, vs_teacher=dict(mean_diff=0.1, se_diff=0.02, ratio=1.5)), "teacher": row(0.2),
        "dmd1": row(0.19, vs_teacher=dict(mean_diff=-0.01, se_diff=0.005, ratio=0.95))}
  lines = table(ev).splitlines()
  assert len(lines) == 5 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
  assert lines[2].startswith("| teacher, 50-step") and "| 100 % | — |" in lines[2]
  assert lines[3].startswith("| DMD student, 1 step") and "| 95 % | -0.010 ± 0.005 |" in lines[3]
  assert lines[4].startswith("| Self-Forcing") and "| 150 % | +0.100 ± 0.020 |" in lines[4]
  assert "| 0.50 | 0.25 | 0.75 | 0.12 | 0.50 |" in lines[4]


@pytest.mark.parametrize("smoke", [False, True])
def test_few_step_dmd_configs_are_the_dmd_recipe_with_their_step_lists(smoke):
  from configs.train import toyworld_dmd, toyworld_dmd1, toyworld_dmd2
  one, two, four = (json.loads(m.get_config(f"smoke={smoke}").to_json())
                    for m in (toyworld_dmd1, toyworld_dmd2, toyworld_dmd))
  assert [c["dmd"].pop("timesteps") for c in (one, two, four)] == [[1000], [1000, 500], [1000, 750, 500, 250]]
  # The 1-step student trains twice as long (600 steps; 300 reached 83 % of the teacher, docs/toyworld.md).
  assert ([c.pop("total_steps") for c in (one, two, four)]) == ([6, 6, 6] if smoke else [600, 300, 300])
  assert one == four and two == four


def test_denoise_error_script_on_the_shipped_teacher():
  """scripts/denoise_error.py: x0 error grows with σ and the prompt's context beats the negative prompt's at high
  σ (the shipped teacher reads its text)."""
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "denoise_error.py"), "--prompts", "4",
                         "--sigmas", "0.3,0.98"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  low, high = out["rows"]
  assert out["clips"] == 4 and (low["sigma"], high["sigma"]) == (0.3, 0.98)
  assert 0.0 < low["x0_mse"] < high["x0_mse"] < out["latent_variance"], out
  assert high["x0_mse"] < high["x0_mse_negative"], out


def test_vae_recon_script_on_the_shipped_vae():
  """scripts/vae_recon.py: the shipped VAE keeps the objects (reconstructions score far above the empty-video
  floor of 0.04; measured 0.55 on these 4 clips) and the renders score ~1."""
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "vae_recon.py"), "--prompts", "4"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  (row,) = out["rows"]
  assert out["clips"] == 4 and out["render_score"] > 0.95, out
  assert row["psnr"] > 20.0 and row["fg_psnr"] > 8.0 and row["score"] > 0.3, out


def test_cpu_recipe_flag_fills_in_teacher_steps_without_overriding_given_ones():
  from train_toyworld import CPU_STEPS, parse_args
  a, _ = parse_args(["--cpu", "--work", "/tmp/tw_cpu_args"])
  assert a.vae_crops and a.clips == 3000 and a.data_format == "npy"
  assert a.out == "/tmp/tw_cpu_args/checkpoints"          # never the shipped set unless --out says so
  assert sorted(a.steps.split(",")) == sorted(f"{k}={v}" for k, v in CPU_STEPS.items())
  assert a.max_seconds == ""                              # a step count, not a machine-dependent budget
  a, _ = parse_args(["--cpu", "--steps", "teacher=60,dmd=30", "--clips", "500", "--data_format", "mp4"])
  assert sorted(a.steps.split(",")) == ["dmd=30", "teacher=60"]
  assert (a.clips, a.data_format) == (500, "mp4")
  a, _ = parse_args([])                                   # without --cpu nothing changes
  assert (a.vae_crops, a.clips, a.data_format, a.max_seconds, a.steps) == (False, 4000, "mp4", "", "")
  assert a.out == os.path.join(REPO, "runs", "toyworld", "checkpoints")   # not the shipped set either
  a, _ = parse_args(["--out", "wanjax/toyworld/checkpoints"])
  assert a.out == os.path.join(os.getcwd(), "wanjax", "toyworld", "checkpoints")
  with pytest.raises(SystemExit):
    parse_args(["--cpu", "--smoke"])


def test_vae_crop_phases_resume_one_run_and_stop_at_the_step_limit():
  """The CPU VAE recipe: one train.vae run per phase, each ending at its step; --steps vae=N cuts the list."""
  from train_toyworld import VAE_CROP_PHASES, vae_crop_phases

  def parsed(phases):
    return [dict(x[len("--config."):].split("=") for x in ph) for ph in phases]

  full = parsed(vae_crop_phases())
  assert [int(p["total_steps"]) for p in full] == [ph[0] for ph in VAE_CROP_PHASES]
  assert [int(p["data.train_frames"]) for p in full] == [5, 9, 17]      # latent frames >= 2 need 17 at the end
  assert all(p["data.train_size"] == "32" and (int(p["data.train_frames"]) - 1) % 4 == 0 for p in full)
  assert [p["loss.fg_weight"] for p in full] == ["0", "0", "10"]
  cut = parsed(vae_crop_phases(1200))
  assert [int(p["total_steps"]) for p in cut] == [1000, 1200]
  assert [int(p["total_steps"]) for p in parsed(vae_crop_phases(10))] == [10]


def test_vae_budget_with_the_crop_recipe_is_refused_before_anything_runs(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train_toyworld.py"), "--cpu", "--work",
                         str(tmp_path), "--stages", "vae", "--max_seconds", "vae=60"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and "--steps vae=N" in proc.stderr, proc.stderr[-2000:]
  assert not os.listdir(tmp_path)


def test_read_scalars_shows_a_resumed_run_once_per_step(tmp_path):
  """After a kill at step 5 and a resume from the step-3 checkpoint, train_log.json's loss curves hold every
  step once, the resumed run's values for steps 4-5 (formerly steps 4 and 5 appeared twice, out of order)."""
  from train import loop
  from train_toyworld import read_scalars
  first = loop._writer(str(tmp_path), 0)
  for s in range(1, 6):
    first.add_scalar("loss/x", float(s), s)
  first.close()
  resumed = loop._writer(str(tmp_path), 3)
  for s in range(4, 8):
    resumed.add_scalar("loss/x", 10.0 + s, s)
  resumed.close()
  assert read_scalars(str(tmp_path / "tb"))["loss/x"] == [[1, 1.0], [2, 2.0], [3, 3.0], [4, 14.0], [5, 15.0],
                                                         [6, 16.0], [7, 17.0]]
