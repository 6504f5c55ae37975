"""Toy-world demonstration of the three post-training recipes (docs/post_training.md, issue 9 item 4).

Stages (each trainer is the real CLI run as a subprocess; trainers resume from their workdirs):

  cfgd    python -m train.distill   CFG distillation of the toy teacher (toyworld_cfg_distill.py) -> WORK/cfgd
  half2   python -m train.distill   step distillation 50 -> 25 UniPC steps of WORK/cfgd (toyworld_step_distill.py)
                                    -> WORK/half2
  reward  python -m train.distill   reward LoRA on WORK/half2 (toyworld_reward_lora.py)
                                    -> WORK/runs/reward/lora/last.safetensors
  eval    infer.sample's Pipeline on the held-out prompts, same seeds for every model; scored with
          wanjax.toyworld.evaluate.score_video and the toy reward (wanjax.toyworld.reward)

Writes OUT/post_train_log.json (atomically, after every stage): per stage the commands, wall seconds and
first/last logged losses; `eval.samples` (one entry per sampled model setting: mean score, accuracy, mean toy
reward of the whole clip and of its first frame, seconds per video) and `eval.table`, the rows of the README
table:
  cfg_distill   teacher, two-pass CFG w, 50 steps      | CFG-distilled student, guidance w, one pass, 50 steps
                (error of the student's videos against the teacher's: mean |Δpixel|, latent RMSE), w in --eval_w
  step_distill  CFG-distilled model at 50 steps (reference) | same at 25 steps (baseline) | half2 at 25 steps
                (errors against the 50-step videos)
  reward_lora   half2 at 25 steps without | with the LoRA (infer.sample's --config.lora=FILE:strength)

  python scripts/post_train_toyworld.py                    # real run: wanjax/toyworld/checkpoints -> runs/toyworld_post
  python scripts/post_train_toyworld.py --smoke --root /tmp/tw_smoke/checkpoints --features /tmp/tw_smoke/features \
      --data /tmp/tw_smoke/data --work /tmp/tw_post_smoke
  python scripts/post_train_toyworld.py --stages eval --eval_prompts 8
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_toyworld import Runner, _write_json, interrupted, read_scalars  # noqa: E402  (the pipeline helpers)
from infer import cli  # noqa: E402

STAGES = ("cfgd", "half2", "reward", "eval")
TRAINED = ("cfgd", "half2", "reward")
FULL_STEPS, HALF_STEPS = 50, 25     # the toy teacher's UniPC steps and the half2 student's
GUIDANCE = 4.0                      # the toy teacher's CFG scale (configs/sample/toyworld.py:model=teacher)


# ------------------------------------------------------------------------------------------------ log

class PostRunner(Runner):
  """`Runner` of train_toyworld.py writing OUT/post_train_log.json (losses.json stays in WORK)."""

  def __init__(self, args):
    super().__init__(args, log_name="post_train_log.json")

  def save(self):   # one process writes this log: no merge (Runner.save merges concurrent stage runs)
    _write_json(self.log_path, self.log)

  def record_extra(self, stage, workdir, tags):
    """First/last logged value of scalar `tags` that are not losses (e.g. reward/mean)."""
    scalars = read_scalars(os.path.join(workdir, "tb"))
    self.log["stages"][stage]["metrics"] = {k: {"first": v[0][1], "last": v[-1][1], "steps": v[-1][0]}
                                            for k, v in sorted(scalars.items()) if k in tags}
    self.save()


# ------------------------------------------------------------------------------------------------ stages

def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default=os.path.join(REPO, "wanjax", "toyworld", "checkpoints"),
                 help="toy checkpoints: umt5, tokenizer, vae, teacher")
  p.add_argument("--work", default=os.path.join(REPO, "runs", "toyworld_post"), help="training runs, exports, "
                 "eval videos")
  p.add_argument("--out", default="", help="folder of post_train_log.json (default WORK)")
  p.add_argument("--features", default=os.path.join(REPO, "runs", "toyworld", "features"),
                 help="train.preprocess feature folder (latents + captions) of the teacher's training clips")
  p.add_argument("--data", default=os.path.join(REPO, "runs", "toyworld", "data"),
                 help="caption folder (one .txt per clip): the reward LoRA's prompts")
  p.add_argument("--smoke", action="store_true", help="the configs' smoke variants at 32x32x5, 2 eval prompts")
  p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
  p.add_argument("--steps", default="", help="override training steps, e.g. cfgd=600,half2=600,reward=250")
  p.add_argument("--eval_prompts", type=int, default=0, help="held-out prompts (default all 32; 2 with --smoke)")
  p.add_argument("--eval_seed", type=int, default=0)
  p.add_argument("--eval_w", default="4,2", help="guidance scales of the CFG-distillation rows (the step and "
                 "reward rows use 4, the toy teacher's)")
  p.add_argument("--lora_strength", default="1", help="LoRA strength(s) at evaluation, comma-separated (one "
                 "reward_lora row each), e.g. 0.5,1")
  a = p.parse_args(argv)
  a.root, a.work = os.path.abspath(a.root), os.path.abspath(a.work)
  a.out = os.path.abspath(a.out or a.work)
  a.features, a.data = os.path.abspath(a.features), os.path.abspath(a.data)
  a.eval_prompts = a.eval_prompts or (2 if a.smoke else 32)
  if not 1 <= a.eval_prompts <= 32:
    p.error(f"--eval_prompts {a.eval_prompts}: must be in [1, 32] (the held-out prompts)")
  a.stages = [s.strip() for s in a.stages.split(",") if s.strip()]
  bad = sorted(set(a.stages) - set(STAGES))
  if bad:
    p.error(f"unknown stages {bad}; valid: {', '.join(STAGES)}")
  a.step_args = {}
  for item in filter(None, (x.strip() for x in a.steps.split(","))):
    key, _, val = item.partition("=")
    if key not in TRAINED or not val.isdigit() or int(val) < 1:
      p.error(f"--steps item {item!r}: expected NAME=STEPS with NAME in {', '.join(TRAINED)} and STEPS >= 1")
    a.step_args[key] = [f"--config.total_steps={val}"]
  try:
    a.eval_w = [float(w) for w in a.eval_w.split(",") if w.strip()]
  except ValueError:
    p.error(f"--eval_w {a.eval_w!r}: expected comma-separated numbers, e.g. 4,2")
  if not a.eval_w or min(a.eval_w) < 1:
    p.error(f"--eval_w {a.eval_w}: give guidance scales >= 1")
  try:
    a.lora_strength = [float(x) for x in a.lora_strength.split(",") if x.strip()]
  except ValueError:
    p.error(f"--lora_strength {a.lora_strength!r}: expected comma-separated numbers, e.g. 0.5,1")
  if not a.lora_strength or min(a.lora_strength) <= 0:
    p.error(f"--lora_strength {a.lora_strength}: give strengths > 0")
  for name, path in (("--root", a.root), ("--features", a.features), ("--data", a.data)):
    if not os.path.isdir(path):
      p.error(f"{name} {path!r} is not a folder")
  return a


def paths(a):
  """Workdirs and exports."""
  runs = {k: os.path.join(a.work, "runs", k) for k in TRAINED}
  return runs, {"teacher": os.path.join(a.root, "teacher"), "cfgd": os.path.join(a.work, "cfgd"),
                "half2": os.path.join(a.work, "half2"),
                "lora": os.path.join(runs["reward"], "lora", "last.safetensors")}


def train_stages(r, a):
  smoke = ":smoke=True" if a.smoke else ""
  runs, ckpt = paths(a)
  text = [f"--config.data.text_encoder={os.path.join(a.root, 'umt5')}",
          f"--config.data.tokenizer={os.path.join(a.root, 'tokenizer')}"]
  # Latents and prompts from the same feature folder: its captions pair with its latents by index.
  feats = [f"--config.data.latents={a.features}", f"--config.data.prompts={a.features}"]
  if "cfgd" in a.stages:
    r.run("cfgd", ["train.distill", "--config", f"configs/train/toyworld_cfg_distill.py{smoke}", "--workdir",
                   runs["cfgd"], f"--config.models.teacher.weights={ckpt['teacher']}", *feats, *text,
                   f"--config.export={ckpt['cfgd']}", *a.step_args.get("cfgd", [])])
    r.record_losses("cfgd", runs["cfgd"])
  if "half2" in a.stages:
    r.run("half2", ["train.distill", "--config", f"configs/train/toyworld_step_distill.py{smoke}", "--workdir",
                    runs["half2"], f"--config.models.teacher.weights={ckpt['cfgd']}", *feats, *text,
                    f"--config.export={ckpt['half2']}", *a.step_args.get("half2", [])])
    r.record_losses("half2", runs["half2"])
  if "reward" in a.stages:
    r.run("reward", ["train.distill", "--config", f"configs/train/toyworld_reward_lora.py{smoke}", "--workdir",
                     runs["reward"], f"--config.models.generator.weights={ckpt['half2']}",
                     f"--config.models.vae.weights={os.path.join(a.root, 'vae')}", f"--config.data.prompts={a.data}",
                     *text, *a.step_args.get("reward", [])])
    r.record_losses("reward", runs["reward"])
    r.record_extra("reward", runs["reward"], ("reward/mean",))


# ------------------------------------------------------------------------------------------------ eval

def eval_settings(a, ckpt):
  """{name: (weights, steps, cfg_scale, guidance, lora)} of every sampled setting, in sampling order."""
  s = {}
  for w in a.eval_w:
    s[f"teacher_cfg{w:g}_{FULL_STEPS}"] = (ckpt["teacher"], FULL_STEPS, w, 0.0, "")
    s[f"cfgd_w{w:g}_{FULL_STEPS}"] = (ckpt["cfgd"], FULL_STEPS, 1.0, w, "")
  s[f"cfgd_w{GUIDANCE:g}_{FULL_STEPS}"] = (ckpt["cfgd"], FULL_STEPS, 1.0, GUIDANCE, "")
  s[f"cfgd_w{GUIDANCE:g}_{HALF_STEPS}"] = (ckpt["cfgd"], HALF_STEPS, 1.0, GUIDANCE, "")
  s[f"half2_w{GUIDANCE:g}_{HALF_STEPS}"] = (ckpt["half2"], HALF_STEPS, 1.0, GUIDANCE, "")
  for strength in a.lora_strength:
    s[lora_name(strength)] = (ckpt["half2"], HALF_STEPS, 1.0, GUIDANCE, f"{ckpt['lora']}:{strength:g}")
  return s


def lora_name(strength):
  return f"half2_lora{strength:g}_w{GUIDANCE:g}_{HALF_STEPS}"


def eval_prompts(n):
  """Half one-object, half two-object held-out prompts (as train_toyworld.py's eval)."""
  from wanjax.toyworld.dataset import HELDOUT_PROMPTS
  return list(HELDOUT_PROMPTS[:n // 2] + HELDOUT_PROMPTS[16:16 + n - n // 2])


def sample_setting(a, setting, prompts, frames, size, out_dir):
  """Samples every prompt with one setting (one Pipeline, models loaded once). Returns (videos [P, T, H, W, 3]
  float32 in [−1, 1], latents [P, F, H, W, C], median seconds per video)."""
  import numpy as np
  from configs.sample import toyworld
  from infer import sample
  from wanjax import sharding
  weights, steps, cfg_scale, guidance, lora = setting
  c = toyworld.get_config(f"model=teacher,root={a.root}")
  c.weights, c.num_steps, c.cfg_scale, c.guidance, c.lora = weights, steps, cfg_scale, guidance, lora
  c.frames, c.size = frames, f"{size}*{size}"
  plan = sample.check(c)
  pipe = sample.Pipeline(c, sharding.make_mesh(c.mesh))
  os.makedirs(out_dir, exist_ok=True)
  videos, latents, times = [], [], []
  for i, prompt in enumerate(prompts):
    c.prompt = prompt
    t0 = time.perf_counter()
    video, latent = pipe.generate(c, plan, seed=a.eval_seed + i)
    times.append(time.perf_counter() - t0)
    videos.append(video)
    latents.append(np.asarray(latent)[0])
    # uint8 copies for inspection (`python -m wanjax.toyworld.evaluate --videos DIR --prompts DIR/prompts.json`)
    np.save(os.path.join(out_dir, f"{i:03d}.npy"), np.round((np.clip(video, -1, 1) + 1) * 127.5).astype(np.uint8))
  rest = times[1:] or times
  return np.stack(videos), np.stack(latents), float(np.median(rest))


def score_setting(videos, prompts):
  """Mean adherence score, accuracy, mean toy reward of the whole clip and of its first frame."""
  import jax
  import numpy as np
  from wanjax.toyworld import evaluate, reward
  reports = [evaluate.score_video(v, p) for v, p in zip(videos, prompts)]
  fn = jax.jit(reward.reward)
  full, first = [], []
  for v, p in zip(videos, prompts):
    targets = {k: jax.numpy.asarray(x) for k, x in reward.batch_targets([p], v.shape[0]).items()}
    full.append(float(fn(v[None], targets)[0][0]))
    first.append(float(fn(v[None, :1], targets)[0][0]))
  return {"mean_score": float(np.mean([r["score"] for r in reports])),
          "accuracy": float(np.mean([r["correct"] for r in reports])),
          "mean_reward": float(np.mean(full)), "mean_reward_frame0": float(np.mean(first)),
          "scores": [round(r["score"], 4) for r in reports]}


def errors(videos, latents, ref_videos, ref_latents):
  """Mean |Δpixel| (pixels in [−1, 1]) and latent RMSE against the reference videos of the same seeds."""
  import numpy as np
  return {"pixel_mae": float(np.mean(np.abs(videos - ref_videos))),
          "latent_rmse": float(np.sqrt(np.mean(np.square(latents - ref_latents))))}


def check_eval_inputs(a, produced=()):
  """The eval stage's models exist (those the `produced` stages of this run will write are not checked); else one
  `error:` line, exit 2."""
  _, ckpt = paths(a)
  made = {ckpt[k] for k in ("cfgd", "half2") if k in produced} | ({ckpt["lora"]} if "reward" in produced else set())
  need = {s[0] for s in eval_settings(a, ckpt).values()} - made
  missing = sorted(w for w in need if not os.path.isfile(os.path.join(w, "config.json")))
  missing += [] if ckpt["lora"] in made or os.path.isfile(ckpt["lora"]) else [ckpt["lora"]]
  if missing:
    cli.fail(f"eval needs {', '.join(missing)}; run the stages {', '.join(TRAINED)} first"
             + (" and pass a --root that holds the toy teacher" if ckpt["teacher"] in missing else ""))


def evaluate(r, a):
  """Samples every setting on the same prompts and seeds, scores them, writes `eval.samples` and `eval.table`."""
  check_eval_inputs(a)
  _, ckpt = paths(a)
  frames, size = (5, 32) if a.smoke else (17, 64)
  prompts = eval_prompts(a.eval_prompts)
  ev = r.log["eval"] = {"prompts": prompts, "seed": a.eval_seed, "frames": frames, "size": size,
                        "lora_strength": a.lora_strength, "samples": {}, "table": []}
  settings = eval_settings(a, ckpt)
  out = {}
  for name, setting in settings.items():
    t0 = time.perf_counter()
    sys.stdout.write(f"[eval] {name}: {len(prompts)} prompts\n")
    sys.stdout.flush()
    videos, latents, per_video = sample_setting(a, setting, prompts, frames, size,
                                                os.path.join(a.work, "eval", name))
    out[name] = (videos, latents)
    weights, steps, cfg_scale, guidance, lora = setting
    ev["samples"][name] = {"weights": weights, "steps": steps, "cfg_scale": cfg_scale, "guidance": guidance,
                           "lora": lora, "forwards_per_video": steps * (2 if cfg_scale != 1 else 1),
                           "seconds_per_video": round(per_video, 3), **score_setting(videos, prompts),
                           "wall_s": round(time.perf_counter() - t0, 1)}
    r.save()

  def row(recipe, label, name, ref=None):
    s = ev["samples"][name]
    entry = {"recipe": recipe, "row": label, "sample": name, "steps": s["steps"],
             "forwards_per_video": s["forwards_per_video"], "mean_score": s["mean_score"],
             "accuracy": s["accuracy"], "mean_reward": s["mean_reward"],
             "mean_reward_frame0": s["mean_reward_frame0"], "seconds_per_video": s["seconds_per_video"]}
    if ref:
      entry.update(vs=ref, **errors(*out[name], *out[ref]))
    ev["table"].append(entry)

  for w in a.eval_w:
    teacher = f"teacher_cfg{w:g}_{FULL_STEPS}"
    row("cfg_distill", f"teacher, CFG {w:g} (two passes), {FULL_STEPS} steps", teacher)
    row("cfg_distill", f"CFG-distilled, guidance {w:g} (one pass), {FULL_STEPS} steps", f"cfgd_w{w:g}_{FULL_STEPS}",
        teacher)
  ref = f"cfgd_w{GUIDANCE:g}_{FULL_STEPS}"
  row("step_distill", f"CFG-distilled (half2's teacher), {FULL_STEPS} steps", ref)
  row("step_distill", f"CFG-distilled, {HALF_STEPS} steps (baseline)", f"cfgd_w{GUIDANCE:g}_{HALF_STEPS}", ref)
  row("step_distill", f"half2 student, {HALF_STEPS} steps", f"half2_w{GUIDANCE:g}_{HALF_STEPS}", ref)
  base = f"half2_w{GUIDANCE:g}_{HALF_STEPS}"
  row("reward_lora", f"half2, {HALF_STEPS} steps, no LoRA", base)
  for strength in a.lora_strength:
    row("reward_lora", f"half2 + reward LoRA ({strength:g}), {HALF_STEPS} steps", lora_name(strength), base)
  r.save()
  sys.stdout.write("\n" + format_table(ev["table"]) + "\n")


def format_table(rows):
  head = f"{'recipe':<13} {'row':<52} {'score':>6} {'acc':>5} {'reward':>7} {'r(f0)':>6} {'|dpix|':>7} {'rmse':>7}"
  lines = [head, "-" * len(head)]
  for e in rows:
    err = (f"{e['pixel_mae']:7.4f} {e['latent_rmse']:7.4f}" if "vs" in e else f"{'':>7} {'':>7}")
    lines.append(f"{e['recipe']:<13} {e['row']:<52} {e['mean_score']:6.3f} {e['accuracy']:5.2f} "
                 f"{e['mean_reward']:7.4f} {e['mean_reward_frame0']:6.3f} {err}")
  return "\n".join(lines)


def main(argv=None):
  a = parse_args(argv)
  if "eval" in a.stages:
    check_eval_inputs(a, produced=a.stages)   # before any training: a missing model must not surface hours later
  r = PostRunner(a)
  r.log.update(smoke=a.smoke, root=a.root, work=a.work, features=a.features, data=a.data)
  t_all = time.perf_counter()
  train_stages(r, a)
  if "eval" in a.stages:
    evaluate(r, a)
  r.log["total_seconds_this_run"] = round(time.perf_counter() - t_all, 1)
  r.save()
  sys.stdout.write(f"\nlog: {r.log_path}\n")


if __name__ == "__main__":
  try:
    main()
  except KeyboardInterrupt:
    interrupted()
