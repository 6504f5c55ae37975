"""One exit-code rule for every CLI (infer/cli.py, README "Exit codes"): 2 when the user's input is at fault, 1
when the run failed, 130 on Ctrl-C; always one `error: ...` line on stderr. The commands fail before any model is
built, so they all run at once, in parallel (the typo'd config field and the missing --workdir of a trainer are
in tests/train/test_train_cli_errors.py). The scripts in scripts/ follow the rule too (formerly a bad
--eval_models and the like were `SystemExit` texts with exit 1), and so does `train.export` of a checkpoint that
cannot be read (formerly orbax's tracebacks, exit 1)."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A trainer whose train_fn raises what FAKE_FAILURE names, through the shared `loop.run_cli`.
_TRAINER = """
import os
from train import loop
from wanjax.errors import CheckpointError

def train_fn(config, workdir):
  failure = os.environ["FAKE_FAILURE"]
  if failure == "nonfinite":
    raise loop.NonFiniteError("3 consecutive non-finite steps (4..6)")
  if failure == "checkpoint_error":
    raise CheckpointError("checkpoint step 2 does not fit this config")
  if failure == "interrupt":
    raise KeyboardInterrupt

loop.run_cli(train_fn, "configs/train/flow_matching.py:smoke=True")
"""

SMOKE = "--config=configs/train/flow_matching.py:smoke=True"

# (name, command after `python`, exit code, what the last stderr line says)
CASES = [
    # trainers (train.loop.run_cli)
    ("trainer_extra_argument", ["-m", "train.flow_matching", SMOKE, "--workdir={tmp}/w", "extra"], 2,
     "error: unexpected arguments ['extra']"),
    ("trainer_missing_config", ["-m", "train.flow_matching", "--workdir={tmp}/w"], 2, "error: --config is required"),
    ("trainer_unknown_flag", ["-m", "train.distill", "--config=configs/train/dmd_smoke.py", "--workdir={tmp}/w",
                              "--nope=1"], 2, "error: Unknown command line flag 'nope'"),
    ("trainer_unwritable_workdir", ["-m", "train.flow_matching", SMOKE, "--workdir={tmp}/a_file/w"], 2,
     "error: --workdir={tmp}/a_file/w is not writable: Not a directory"),
    ("trainer_checkpoint_error", ["{tmp}/trainer.py", SMOKE, "--workdir={tmp}/w_checkpoint"], 2,
     "error: checkpoint step 2 does not fit this config"),
    ("trainer_nonfinite", ["{tmp}/trainer.py", SMOKE, "--workdir={tmp}/w_nonfinite"], 1,
     "error: 3 consecutive non-finite steps (4..6)"),
    ("trainer_interrupt", ["{tmp}/trainer.py", SMOKE, "--workdir={tmp}/w_interrupt"], 130,
     "interrupted: no checkpoint was written yet"),
    # tools
    ("preprocess_missing_config", ["-m", "train.preprocess", "--input={tmp}"], 2, "error: --config is required"),
    ("preprocess_missing_input", ["-m", "train.preprocess", "--config=configs/data/toyworld.py"], 2,
     "error: --input is required"),
    ("export_missing_config", ["-m", "train.export", "--out={tmp}/model"], 2, "error: give --config and --workdir"),
    ("ode_pairs_missing_config", ["-m", "train.make_ode_pairs", "--output={tmp}/pairs"], 2,
     "error: --config is required"),
    ("ode_pairs_bad_flag_value", ["-m", "train.make_ode_pairs", "--num_steps=many"], 2,
     "error: flag --num_steps=many: invalid literal for int()"),
    ("vocab_missing_out", ["-m", "wanjax.toyworld.vocab"], 2, "error: --out is required"),
    ("dataset_bad_flag_value", ["-m", "wanjax.toyworld.dataset", "--out={tmp}/d", "--n=abc"], 2,
     "error: flag --n=abc: invalid literal for int()"),
    ("evaluate_missing_videos", ["-m", "wanjax.toyworld.evaluate"], 2, "error: --videos is required"),
    ("forward_missing_model", ["-m", "infer.forward"], 2, "error: --model is required"),
    ("convert_missing_src", ["-m", "converters.convert"], 2, "error: --src and --out are required"),
    ("sample_extra_argument", ["-m", "infer.sample", "x"], 2, "error: unexpected arguments ['x']"),
    ("sample_bad_sharding_override", ["-m", "infer.sample", "--config.sharding_overrides=embed=bogus",
                                      "--config.output_dir={tmp}/out"], 2,
     "error: sharding_overrides: unknown mesh axis 'bogus' in 'embed=bogus'"),
    ("serve_extra_argument", ["-m", "infer.serve", "x"], 2, "error: unexpected arguments ['x']"),
    ("export_corrupt_checkpoint", ["-m", "train.export", SMOKE, "--workdir={tmp}/corrupt", "--out={tmp}/model"], 2,
     "error: --workdir {tmp}/corrupt: checkpoint step 4 in {tmp}/corrupt/checkpoints cannot be read ("),
    # scripts/
    ("toyworld_eval_models", ["scripts/train_toyworld.py", "--smoke", "--work={tmp}/tw", "--stages=eval",
                              "--eval_models=teacher,nope"], 2, "error: --eval_models: toyworld model='nope'; valid: "),
    ("post_train_missing_models", ["scripts/post_train_toyworld.py", "--root={tmp}", "--features={tmp}",
                                   "--data={tmp}", "--work={tmp}/pt", "--stages=eval"], 2,
     "error: eval needs {tmp}/pt/cfgd, {tmp}/pt/half2, {tmp}/teacher, {tmp}/pt/runs/reward/lora/last.safetensors; "
     "run the stages cfgd, half2, reward first and pass a --root that holds the toy teacher"),
    ("toyworld_table_missing_log", ["scripts/toyworld_table.py", "--log={tmp}/none.json"], 2,
     "error: --log {tmp}/none.json: cannot read it (No such file or directory)"),
    ("frame_strip_bad_model", ["scripts/frame_strip.py", "--out={tmp}/strip.png", "--models=teacher,nope"], 2,
     "error: --models: toyworld model='nope'"),
    ("denoise_error_missing_root", ["scripts/denoise_error.py", "--root={tmp}/none", "--prompts=1"], 2,
     "error: '{tmp}/none/teacher' is not a converted model directory"),
]


def _corrupt_checkpoint(workdir):
  """Checkpoint steps 2 and 4 of a tiny state (as tests/train/test_train_cli_errors.py), step 4's data files cut to
  5 bytes (as tests/train/test_resume.py)."""
  import numpy as np
  from train import loop
  manager = loop.checkpoint_manager(workdir, async_save=False)
  for s in (2, 4):
    loop.save(manager, s, {"generator": {"params": {"x": np.full((3,), float(s), np.float32)}}})
  manager.wait_until_finished()
  manager.close()
  data = glob.glob(os.path.join(loop.checkpoint_dir(workdir), "4", "default", "**", "d", "*"), recursive=True)
  assert data
  for f in data:
    with open(f, "r+b") as fh:
      fh.truncate(5)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("exit_codes")
  (tmp / "trainer.py").write_text(_TRAINER)
  (tmp / "a_file").write_text("")
  _corrupt_checkpoint(str(tmp / "corrupt"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = {}
  for name, args, _, _ in CASES:
    e = dict(env, FAKE_FAILURE=name.split("_", 1)[1]) if name.startswith("trainer_") else env
    procs[name] = subprocess.Popen([sys.executable] + [a.format(tmp=tmp) for a in args], cwd=ROOT, env=e,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  out = {name: (p.communicate(timeout=120)[1], p.returncode)[::-1] for name, p in procs.items()}
  return tmp, out


@pytest.mark.parametrize("name,code,line", [(n, c, ln) for n, _, c, ln in CASES], ids=[c[0] for c in CASES])
def test_exit_code_and_one_error_line(results, name, code, line):
  tmp, out = results
  rc, err = out[name]
  lines = [ln for ln in err.splitlines() if ln.strip()]
  assert rc == code, err[-2000:]
  assert "Traceback" not in err and lines[-1].startswith(line.format(tmp=tmp)), err[-2000:]
  assert sum(ln.startswith("error: ") for ln in lines) == (0 if code == 130 else 1), err[-2000:]


def test_export_of_a_corrupt_checkpoint_names_the_other_steps_and_writes_nothing(results):
  tmp, out = results
  rc, err = out["export_corrupt_checkpoint"]
  last = err.strip().splitlines()[-1]
  assert last.endswith("); export another step with --step (saved: 2) or retrain it"), last
  assert "Requested byte range" in last   # tensorstore's reason: the data file was cut short
  assert "tensorstore_spec" not in last and "Event loop is closed" not in err, err[-2000:]
  assert not (tmp / "model").exists()


def test_toyworld_stage_that_failed_on_its_input_keeps_exit_2(tmp_path):
  """A stage's CLI that refuses its input (exit 2) makes the script exit 2 too, naming the stage (formerly a
  `SystemExit` text, exit 1)."""
  proc = subprocess.run([sys.executable, "scripts/train_toyworld.py", "--smoke", f"--work={tmp_path}",
                         "--stages=teacher"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert lines[0].startswith(f"error: config.data.latents='{tmp_path}/features' is not a folder"), lines
  assert lines[-1].startswith("error: stage teacher failed (exit 2): ") and lines[-1].endswith(
      f"--config.data.latents={tmp_path}/features"), lines
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
