"""Trains every toy-world model with the project's own CLIs and exports them (docs/toyworld.md, issue 8).

Stages (each one a real CLI run as a subprocess, so this is exactly what a user would type; trainers and
preprocessing resume from their folders, so a rerun continues where a stopped one ended):

  data      python -m wanjax.toyworld.dataset          clips + captions + tokenizer.json
  vae       python -m train.vae                        VAE (configs/train/toyworld_vae.py)
            python -m train.export                     -> OUT/vae (latent mean/std fitted)
  text      python -m train.export --umt5 toyworld     frozen random umT5 -> OUT/umt5; tokenizer -> OUT/tokenizer
  features  python -m train.preprocess                 VAE latents + umT5 contexts of every clip
  teacher   python -m train.flow_matching              DiT teacher (configs/train/toyworld_teacher.py) -> OUT/teacher
  dmd       python -m train.distill                    4-step DMD student (configs/train/toyworld_dmd.py) -> OUT/dmd
  dmd2      python -m train.distill                    2-step DMD student (configs/train/toyworld_dmd2.py) -> OUT/dmd2
  dmd1      python -m train.distill                    1-step DMD student (configs/train/toyworld_dmd1.py) -> OUT/dmd1
  odepairs  python -m train.make_ode_pairs             teacher ODE trajectories (48 Euler steps, CFG 4)
  ode       python -m train.distill                    causal ODE-init regression (toyworld_ode_init.py) -> WORK/sf_ode
  sf        python -m train.distill                    causal Self-Forcing student (toyworld_self_forcing.py) -> OUT/sf
  eval      infer.sample's Pipeline + python -m wanjax.toyworld.evaluate on held-out prompts

Writes OUT/train_log.json (per stage: command, seconds, first/last logged losses; export summaries; scores) and
WORK/losses.json (every logged scalar). `--smoke` runs every stage for a few steps at 32×32×5 (CPU, minutes).

  python scripts/train_toyworld.py                       # GPU-sized defaults -> WORK/checkpoints (WORK: runs/toyworld)
  python scripts/train_toyworld.py --cpu --eval_seeds 4  # every model on a 2-core CPU (about 2 h 37 min): the shipped recipe
  python scripts/train_toyworld.py --smoke --work /tmp/tw_smoke
  python scripts/train_toyworld.py --stages teacher,dmd,eval   # rerun some stages
  python scripts/train_toyworld.py --stages eval --eval_seeds 4 --out wanjax/toyworld/checkpoints   # the shipped table
"""

import argparse
import glob
import json
import os
import struct
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)     # the repo's packages, also without `pip install -e .`
from infer import cli  # noqa: E402  (one `error:` line and the exit codes of every CLI: 2 input, 1 run, 130 Ctrl-C)
# `--cpu`: the teacher's steps, the trainer that dominates a CPU run after the VAE (the other stages run their
# configs' steps). 4,555 is where a 1,800-s budget stopped it on the 2-core CPU in session 6; a step count rather
# than a budget, so that every machine trains the same teacher (data order and noise are functions of the step).
CPU_STEPS = {"teacher": 4555}
# `--vae_crops` (and `--cpu`): the VAE's CPU recipe, in phases on 32×32 crops, each a `train.vae` run that resumes
# the previous one: (until step, window frames, batch, clips held, foreground weight). Cheap 5-frame windows
# first, then longer ones, since latent frames >= 2 need 17-frame windows (docs/toyworld.md). This is the recipe
# of the session-2 CPU VAE; rerun in session 6 (72 min) it reconstructs held-out clips with a detector score of
# 0.628, against 0.520 for the GPU-trained VAE (scripts/vae_recon.py). 17-frame crops at batch 4 from step 0
# learned nothing in 871 steps.
VAE_CROP_PHASES = ((1000, 5, 8, 0, 0.0), (1600, 9, 8, 0, 0.0), (2100, 17, 4, 1500, 10.0))
STAGES = ("data", "vae", "text", "features", "teacher", "dmd", "dmd2", "dmd1", "odepairs", "ode", "sf", "eval")
DMD_STUDENTS = ("dmd", "dmd2", "dmd1")   # 4-, 2- and 1-step DMD students, all from the teacher
EVAL_MODELS = ("teacher", "teacher4", "teacher2", "teacher1", "teacher_dmd_sampler", "dmd", "dmd2", "dmd1", "sf")


# ------------------------------------------------------------------------------------------------ helpers

def read_scalars(tb_dir) -> dict:
  """{tag: [[step, value], ...]} from the TensorBoard event files tensorboardX wrote (TFRecord framing:
  u64 length, u32 crc, payload, u32 crc; payload = an `Event` proto), as TensorBoard shows them after a resume:
  the files are read in name (= start time) order, and a resumed run's start marker (SessionLog.START at step s)
  or a repeated or lower step drops the values at steps >= s read before it, so every step appears once."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      raw = f.read()
    pos = 0
    while pos + 12 <= len(raw):
      (n,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      step = int(event.step)
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        out = {tag: [p for p in pts if p[0] < step] for tag, pts in out.items()}
      for v in event.summary.value:
        value = v.simple_value if v.HasField("simple_value") else (v.tensor.float_val[0] if v.tensor.float_val
                                                                    else None)
        if value is not None:
          pts = out.setdefault(v.tag, [])
          while pts and pts[-1][0] >= step:
            pts.pop()
          pts.append([step, float(value)])
  return out


def loss_summary(scalars) -> dict:
  """First and last logged value of every loss/psnr tag."""
  return {k: {"first": v[0][1], "last": v[-1][1], "steps": v[-1][0]} for k, v in sorted(scalars.items())
          if k.startswith(("loss/", "psnr"))}


class Runner:
  def __init__(self, args, log_name="train_log.json"):
    self.args = args
    self.log_path = os.path.join(args.out, log_name)
    self.log = {"smoke": args.smoke, "stages": {}}
    if os.path.exists(self.log_path):
      with open(self.log_path) as f:
        self.log = json.load(f)
    self.losses = {}
    self.touched, self.touched_eval = set(), set()

  def run(self, stage, argv):
    """Runs `python -m ...argv` from the repo root; raises on failure (its output is shown as it runs)."""
    cmd = [sys.executable, "-m"] + argv
    sys.stdout.write(f"\n[{stage}] {' '.join(cmd)}\n")
    sys.stdout.flush()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode:   # the stage printed its own error; a usage error (2) or Ctrl-C (130) keeps its code
      cli.fail(f"stage {stage} failed (exit {proc.returncode}): {' '.join(cmd)}",
               exit_code=proc.returncode if proc.returncode in (cli.USAGE_EXIT, 130) else 1)
    self.add_seconds(stage, time.perf_counter() - t0)
    entry = self.log["stages"][stage]
    entry["commands"].append(" ".join(argv))
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if last.startswith("{"):
      entry.setdefault("exports", []).append(json.loads(last))
    self.save()

  def record_losses(self, stage, workdir):
    scalars = read_scalars(os.path.join(workdir, "tb"))
    self.log["stages"][stage]["losses"] = loss_summary(scalars)
    self.losses[stage] = scalars
    path = os.path.join(self.args.work, "losses.json")
    old = json.load(open(path)) if os.path.exists(path) else {}
    old.update(self.losses)
    _write_json(path, old)
    self.save()

  def add_seconds(self, stage, seconds):
    """Adds wall seconds to a stage: `run`'s commands, and work done in-process or by a helper subprocess."""
    entry = self.log["stages"].setdefault(stage, {"commands": [], "seconds": 0.0})
    entry["seconds"] = round(entry["seconds"] + seconds, 1)
    self.touched.add(stage)

  def save(self):
    """Writes the log, merged with the file's current content: stages run by another process at the same time
    (the SF stages run beside DMD) keep their entries."""
    if os.path.exists(self.log_path):
      with open(self.log_path) as f:
        current = json.load(f)
      for key, touched in (("stages", self.touched), ("eval", self.touched_eval)):
        mine = self.log.setdefault(key, {})          # updated in place: callers hold references into it
        merged = {**current.get(key, {}), **{k: mine[k] for k in touched if k in mine}}
        mine.clear()
        mine.update(merged)
    _write_json(self.log_path, self.log)


def _write_json(path, obj):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ stages

def parse_args(argv=None):
  """The parsed command line with the defaults that depend on --smoke / --cpu filled in; returns (args, parser)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="every stage for a few steps at 32x32x5 (CPU, minutes)")
  p.add_argument("--work", default="", help="data, features and training runs (default runs/toyworld, or "
                 "/tmp/toyworld_smoke with --smoke)")
  p.add_argument("--out", default="", help="exported model dirs + train_log.json (default WORK/checkpoints; "
                 "--out wanjax/toyworld/checkpoints replaces or re-evaluates the shipped set)")
  p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
  p.add_argument("--cpu", action="store_true", help="the CPU recipe: --vae_crops, 3000 lossless npy clips and "
                 "teacher=4555 steps (an item given in --steps wins); the shipped checkpoints are its output and "
                 "docs/toyworld.md gives its measured time and scores")
  p.add_argument("--clips", type=int, default=0, help="dataset size (default 4000, 3000 with --cpu; 8 with --smoke)")
  p.add_argument("--eval_prompts", type=int, default=0, help="held-out prompts sampled per model (default 32; "
                 "2 with --smoke)")
  p.add_argument("--eval_seed", type=int, default=0)
  p.add_argument("--eval_seeds", type=int, default=1, help="videos per held-out prompt: seed eval_seed + i + "
                 "1000 k for k < eval_seeds (k = 0 alone is the 32-video table; 4 gives the 128-video table with "
                 "tighter paired standard errors)")
  p.add_argument("--eval_models", default=",".join(EVAL_MODELS), help="models the eval stage samples "
                 "(those of configs/sample/toyworld.py; teacherN is the teacher at N steps)")
  p.add_argument("--ode_pairs", type=int, default=0, help="teacher trajectories for the SF ODE init (default 1024; "
                 "8 with --smoke)")
  p.add_argument("--steps", default="", help="override training steps, e.g. vae=1500,teacher=4000,dmd=1000,ode=500,sf=600 "
                 "(default: the configs' total_steps)")
  p.add_argument("--max_seconds", default="", help="wall-clock budget per trainer, e.g. vae=170,teacher=100: the "
                 "run stops and saves at the first step past it (config max_train_seconds); the steps reached "
                 "are in the log")
  p.add_argument("--data_format", choices=("mp4", "npy"), default=None, help="clip files of the data stage: "
                 "mp4 (H.264, small; the default) or npy (lossless float32, 835 KB per clip, needs no ffmpeg; the "
                 "default with --cpu)")
  p.add_argument("--vae_precision", choices=("float32", "bf16"), default="float32", help="VAE training compute "
                 "(bf16: fp32 params, bf16 convolutions, several times faster on a GPU; the shipped VAE is float32)")
  p.add_argument("--vae_crops", action="store_true", help="train the VAE on random 32x32 crops in the "
                 "phases of VAE_CROP_PHASES (5-, 9-, then 17-frame windows; the CPU recipe, docs/toyworld.md)")
  a = p.parse_args(argv)
  if a.cpu and a.smoke:
    p.error("--cpu and --smoke exclude each other (--smoke is already a CPU run of a few steps)")
  if a.cpu:
    a.vae_crops = True
    given = {x.partition("=")[0].strip() for x in a.steps.split(",") if x.strip()}
    a.steps = ",".join(filter(None, [a.steps] + [f"{k}={v}" for k, v in CPU_STEPS.items() if k not in given]))
  a.data_format = a.data_format or ("npy" if a.cpu else "mp4")
  a.work = os.path.abspath(a.work or ("/tmp/toyworld_smoke" if a.smoke else os.path.join(REPO, "runs", "toyworld")))
  # Every run writes beside its work folder: only a deliberate --out replaces (or re-evaluates) the shipped set.
  a.out = os.path.abspath(a.out or os.path.join(a.work, "checkpoints"))
  a.clips = a.clips or (8 if a.smoke else 3000 if a.cpu else 4000)
  a.eval_prompts = a.eval_prompts or (2 if a.smoke else 32)
  if a.eval_seeds < 1:
    p.error(f"--eval_seeds={a.eval_seeds}: must be >= 1 (videos per held-out prompt)")
  a.ode_pairs = a.ode_pairs or (8 if a.smoke else 1024)
  return a, p


def eval_weights(a) -> dict:
  """{model: weights folder} of `--eval_models` (configs/sample/toyworld.py knows the models, teacherN included);
  an unknown model is one `error:` line, exit 2."""
  from configs.sample import toyworld
  from wanjax.errors import UsageError
  out = {}
  for model in [m.strip() for m in a.eval_models.split(",") if m.strip()]:
    try:
      out[model] = toyworld.get_config(f"model={model},root={a.out}").weights
    except UsageError as e:
      cli.fail(f"--eval_models: {e}")
  return out


def vae_crop_phases(total=None) -> list:
  """`train.vae` overrides of each `VAE_CROP_PHASES` phase, cut at `total` steps (`--steps vae=N`) when given."""
  out, start = [], 0
  for until, frames, batch, clips, fg in VAE_CROP_PHASES:
    if total is not None and start >= total:
      break
    end = until if total is None else min(until, total)
    out.append([f"--config.data.train_frames={frames}", "--config.data.train_size=32",
                f"--config.data.batch_size={batch}", f"--config.data.max_clips={clips}",
                f"--config.loss.fg_weight={fg:g}", f"--config.total_steps={end}"])
    start = end
  return out


def main():
  a, p = parse_args()
  stages = [s.strip() for s in a.stages.split(",") if s.strip()]
  bad = sorted(set(stages) - set(STAGES))
  if bad:
    p.error(f"unknown stages {bad}; valid: {', '.join(STAGES)}")
  if "eval" in stages:
    eval_weights(a)   # checked before any stage runs: a typo must not surface after hours of training
  frames, size = (5, 32) if a.smoke else (17, 64)
  smoke = ":smoke=True" if a.smoke else ""
  data_dir, feat_dir = os.path.join(a.work, "data"), os.path.join(a.work, "features")
  runs = {k: os.path.join(a.work, "runs", k) for k in ("vae", "teacher", *DMD_STUDENTS, "ode", "sf")}
  ckpt = {k: os.path.join(a.out, k) for k in ("vae", "umt5", "tokenizer", "teacher", *DMD_STUDENTS, "sf")}
  ckpt["sf_ode"] = os.path.join(a.work, "sf_ode")      # intermediate, not shipped
  pairs_dir = os.path.join(a.work, "ode_pairs")
  cfg = {k: f"configs/train/toyworld_{k}.py{smoke}" for k in ("vae", "teacher", *DMD_STUDENTS)}
  cfg["ode"] = f"configs/train/toyworld_ode_init.py{smoke}"
  cfg["sf"] = f"configs/train/toyworld_self_forcing.py{smoke}"
  steps, limits = {}, {}
  for item in filter(None, (x.strip() for x in a.steps.split(","))):
    key, _, val = item.partition("=")
    if key not in runs or not val.isdigit() or int(val) < 1:
      p.error(f"--steps item {item!r}: expected NAME=STEPS with NAME in {', '.join(runs)} and STEPS >= 1")
    limits[key] = int(val)
    steps[key] = [f"--config.total_steps={val}"]
  for item in filter(None, (x.strip() for x in a.max_seconds.split(","))):
    key, _, val = item.partition("=")
    try:
      seconds = float(val)
    except ValueError:
      seconds = -1.0
    if key not in runs or seconds <= 0:
      p.error(f"--max_seconds item {item!r}: expected NAME=SECONDS with NAME in {', '.join(runs)} and SECONDS > 0")
    if key == "vae" and a.vae_crops and not a.smoke:
      p.error(f"--max_seconds item {item!r}: the VAE crop recipe (--vae_crops, --cpu) runs fixed phases of steps "
              f"(VAE_CROP_PHASES); shorten it with --steps vae=N")
    steps.setdefault(key, []).append(f"--config.max_train_seconds={seconds:g}")
  r = Runner(a)
  r.log.update(work=a.work, out=a.out, frames=frames, size=size, clips=a.clips)
  t_all = time.perf_counter()

  if "data" in stages:
    r.run("data", ["wanjax.toyworld.dataset", "--out", data_dir, "--n", str(a.clips), "--frames", str(frames),
                   "--size", str(size), "--format", a.data_format])
  if "vae" in stages:
    precision = [f"--config.vae.precision={a.vae_precision}"] if a.vae_precision != "float32" else []
    base = ["train.vae", "--config", cfg["vae"], "--workdir", runs["vae"], f"--config.data.clips={data_dir}",
            *precision]
    if a.vae_crops and not a.smoke:
      for args in vae_crop_phases(limits.get("vae")):
        r.run("vae", base + args)
    else:
      r.run("vae", base + steps.get("vae", []))
    r.record_losses("vae", runs["vae"])
    r.run("vae", ["train.export", "--config", cfg["vae"], "--workdir", runs["vae"], "--out", ckpt["vae"],
                  f"--config.data.clips={data_dir}"])
  if "text" in stages:
    r.run("text", ["train.export", "--umt5", "toyworld", "--seed", "0", "--out", ckpt["umt5"]])
    r.run("text", ["wanjax.toyworld.vocab", "--out", ckpt["tokenizer"]])
  if "features" in stages:
    # The colleague's toy preprocessing config with the trained encoders; umT5 in bf16 as every consumer
    # (train.distill and infer.sample load it in bf16).
    r.run("features", ["train.preprocess", "--config", "configs/data/toyworld.py", "--input", data_dir,
                       "--output", feat_dir, "--config.random_encoders=False", f"--config.vae={ckpt['vae']}",
                       f"--config.text_encoder={ckpt['umt5']}", f"--config.tokenizer={ckpt['tokenizer']}",
                       f"--config.frames={frames}", "--config.fps=16", f"--config.sizes=('{size}*{size}',)",
                       "--config.text_dtype=bf16", "--config.mesh=data=-1", "--config.batch_size=8",
                       "--config.clips_per_shard=256"])
  if "teacher" in stages:
    r.run("teacher", ["train.flow_matching", "--config", cfg["teacher"], "--workdir", runs["teacher"],
                      f"--config.data.latents={feat_dir}", *steps.get("teacher", [])])
    r.record_losses("teacher", runs["teacher"])
    r.run("teacher", ["train.export", "--config", cfg["teacher"], "--workdir", runs["teacher"], "--out",
                      ckpt["teacher"]])
  for dmd in DMD_STUDENTS:
    if dmd not in stages:
      continue
    weights = [f"--config.models.{role}.weights={ckpt['teacher']}" for role in ("generator", "teacher", "critic")]
    r.run(dmd, ["train.distill", "--config", cfg[dmd], "--workdir", runs[dmd], *weights,
                f"--config.data.prompts={data_dir}", f"--config.data.text_encoder={ckpt['umt5']}",
                f"--config.data.tokenizer={ckpt['tokenizer']}", *steps.get(dmd, [])])
    r.record_losses(dmd, runs[dmd])
    r.run(dmd, ["train.export", "--config", cfg[dmd], "--workdir", runs[dmd], "--out", ckpt[dmd], "--ema"])
  text = [f"--config.data.text_encoder={ckpt['umt5']}", f"--config.data.tokenizer={ckpt['tokenizer']}"]
  if "odepairs" in stages:
    r.run("odepairs", ["train.make_ode_pairs", "--config", cfg["ode"], "--output", pairs_dir,
                       f"--config.models.generator.weights={ckpt['teacher']}", f"--config.data.prompts={data_dir}",
                       *text, "--guidance=4", "--batch_size=16", "--dtype=float32",
                       f"--num_samples={a.ode_pairs}", *(["--num_steps=8"] if a.smoke else [])])
  if "ode" in stages:
    r.run("ode", ["train.distill", "--config", cfg["ode"], "--workdir", runs["ode"],
                  f"--config.models.generator.weights={ckpt['teacher']}", f"--config.data.trajectories={pairs_dir}",
                  *steps.get("ode", [])])
    r.record_losses("ode", runs["ode"])
    r.run("ode", ["train.export", "--config", cfg["ode"], "--workdir", runs["ode"], "--out", ckpt["sf_ode"]])
  if "sf" in stages:
    weights = [f"--config.models.generator.weights={ckpt['sf_ode']}",
               *(f"--config.models.{role}.weights={ckpt['teacher']}" for role in ("teacher", "critic"))]
    r.run("sf", ["train.distill", "--config", cfg["sf"], "--workdir", runs["sf"], *weights,
                 f"--config.data.prompts={data_dir}", *text, *steps.get("sf", [])])
    r.record_losses("sf", runs["sf"])
    r.run("sf", ["train.export", "--config", cfg["sf"], "--workdir", runs["sf"], "--out", ckpt["sf"], "--ema"])
  if "eval" in stages:
    evaluate(r, a, frames, size)
  r.log["total_seconds_this_run"] = round(time.perf_counter() - t_all, 1)
  r.save()
  sys.stdout.write(f"\nlog: {r.log_path}\n")


def evaluate(r, a, frames, size):
  """Samples `eval_prompts` held-out prompts with each model (one process, models loaded once), saves
  lossless .npy clips and scores them with the evaluator CLI."""
  from wanjax.toyworld.dataset import HELDOUT_PROMPTS
  prompts = list(HELDOUT_PROMPTS[:a.eval_prompts // 2] + HELDOUT_PROMPTS[16:16 + a.eval_prompts - a.eval_prompts // 2])
  scores = r.log.setdefault("eval", {})
  for model, weights in eval_weights(a).items():
    if not os.path.exists(os.path.join(weights, "config.json")):
      sys.stdout.write(f"[eval] {model}: no checkpoint at {weights}; skipped\n")
      continue
    out = os.path.join(a.work, "eval", model)
    for stale in glob.glob(os.path.join(out, "*.npy")):   # a previous eval's clips (the file count may differ)
      os.remove(stale)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_sample", model, a.out, out,
                           str(frames), str(size), str(a.eval_seed), str(int(a.smoke)), json.dumps(prompts),
                           str(a.eval_seeds)],
                          cwd=REPO, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
      cli.fail(f"eval sampling of {model} failed (exit {proc.returncode})", exit_code=1)
    r.add_seconds("eval", time.perf_counter() - t0)   # the stage's seconds count sampling, not only scoring
    timing = json.loads(proc.stdout.strip().splitlines()[-1])
    _write_json(os.path.join(out, "prompts.json"), {"prompts": prompts * a.eval_seeds})
    report = os.path.join(out, "scores.json")
    r.run("eval", ["wanjax.toyworld.evaluate", "--videos", out, "--prompts", os.path.join(out, "prompts.json"),
                   "--out", report])
    with open(report) as f:
      rep = json.load(f)
    r.touched_eval.add(model)
    scores[model] = {"mean_score": rep.get("mean_score"), "accuracy": rep.get("accuracy"),
                     "mean_terms": rep.get("mean_terms"),
                     "seconds_per_video": timing["median_s"], "first_video_s": timing["first_s"],
                     "prompts": len(prompts), "seeds_per_prompt": a.eval_seeds,
                     "wall_s": round(time.perf_counter() - t0, 1),
                     "seed": a.eval_seed, "per_video": [round(v["score"], 4) for v in rep.get("videos", [])]}
    r.save()
  r.touched_eval.update(paired_vs_teacher(scores))   # rows whose paired statistics changed are written too
  r.save()


def paired_vs_teacher(scores):
  """Adds to every eval row scored on the teacher's videos' (prompt, seed) pairs its paired difference from the
  50-step teacher: mean, standard error over videos, and the ratio of means. The rows share prompts and seeds,
  so the prompt-to-prompt spread (most of the variance) cancels. Returns the names of the rows it changed."""
  import numpy as np
  base = scores.get("teacher")
  if not base:
    return set()
  t = np.asarray(base["per_video"], np.float64)
  changed = set()
  for name, row in scores.items():
    old = row.get("vs_teacher")
    v = np.asarray(row["per_video"], np.float64)
    if name == "teacher" or len(v) != len(t) or row.get("seed") != base.get("seed"):
      row.pop("vs_teacher", None)
    else:
      d = v - t
      row["vs_teacher"] = {"mean_diff": round(float(d.mean()), 4),
                           "se_diff": round(float(d.std(ddof=1) / np.sqrt(len(d))), 4) if len(d) > 1 else None,
                           "ratio": round(float(v.mean() / t.mean()), 4) if t.mean() else None}
    if row.get("vs_teacher") != old:
      changed.add(name)
  return changed


def toyworld_generator(model, root="", **overrides):
  """(config, generate(seed) -> video [T, H, W, 3]) for a `configs/sample/toyworld.py` model with config
  `overrides`, models loaded once; the prompt is read from `config.prompt` at each call. Used by the eval stage,
  the frame strip and the tests."""
  from configs.sample import toyworld
  from infer import sample
  from wanjax import sharding
  c = toyworld.get_config(f"model={model}" + (f",root={root}" if root else ""))
  c.update(overrides)
  plan = sample.check(c)
  mesh = sharding.make_mesh(c.mesh)
  if model == "sf":
    return c, ar_generator(c, plan, mesh)
  pipe = sample.Pipeline(c, mesh)
  return c, lambda seed: pipe.generate(c, plan, seed=seed)[0]


def sample_child(model, root, out, frames, size, seed, smoke, prompts, seeds="1"):
  """Child process of `evaluate`: one generator, every prompt × `seeds` seeds (video k·n + i: prompt i, seed
  seed + i + 1000 k); prints {"median_s", "first_s"}."""
  import numpy as np
  overrides = dict(frames=int(frames), size=f"{size}*{size}")
  if int(smoke) and model == "teacher":
    overrides["num_steps"] = 3          # smoke: the 50-step row at 3 steps
  c, generate = toyworld_generator(model, root, **overrides)
  os.makedirs(out, exist_ok=True)
  times = []
  prompts = json.loads(prompts)
  for k in range(int(seeds)):
    for i, prompt in enumerate(prompts):
      c.prompt = prompt
      t0 = time.perf_counter()
      video = generate(int(seed) + i + 1000 * k)
      times.append(time.perf_counter() - t0)
      np.save(os.path.join(out, f"{k * len(prompts) + i:04d}.npy"), video)
  rest = times[1:] or times
  sys.stdout.write(json.dumps({"median_s": round(float(np.median(rest)), 3), "first_s": round(times[0], 3)}) + "\n")


def ar_generator(c, plan, mesh):
  """seed -> video [T, H, W, 3] with the block-wise AR sampler (as `infer.sample_ar.run_ar`, models loaded once;
  the prompt is read from `c.prompt` at each call)."""
  import jax
  import numpy as np
  from infer import sample
  from infer.sample_ar import ar_options
  from wanjax import sampling_ar
  opts = ar_options(c)
  dit, vae = sample.build_dit(c, plan, mesh), sample.build_vae(c, mesh)
  shape = sample.latent_shape(plan)

  def generate(seed):
    context, _ = sample.encode_text(c, plan, mesh)
    noise_key, loop_key = jax.random.split(jax.random.key(seed))
    noise = jax.random.normal(noise_key, shape, jax.numpy.float32)
    frames = []
    sampling_ar.generate(dit, jax.numpy.asarray(context), noise, opts, rng=loop_key, vae=vae,
                         on_frames=lambda x: frames.append(np.asarray(jax.device_get(x))[0]))
    return np.concatenate(frames)
  return generate


def interrupted():
  """Ctrl-C: one line and exit 130 (the stages resume from their folders)."""
  print("interrupted: rerun the same command to continue (the trainers resume from their workdirs)",
        file=sys.stderr)
  sys.exit(130)


if __name__ == "__main__":
  child = len(sys.argv) > 1 and sys.argv[1] == "--_sample"
  try:
    if child:
      sample_child(*sys.argv[2:])
    else:
      main()
  except KeyboardInterrupt:
    if child:
      sys.exit(130)   # the parent, interrupted too, says it once
    interrupted()
