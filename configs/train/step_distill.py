"""Step distillation of a CFG-distilled DiT (distill_wan2.1 `distill_step.py`, spec post_training.md A.4).

mode=half2 (default; the final 720p run): teacher grid 40, student grid 20, shift 3, target = teacher (no EMA).
mode=consistency: grid 10, k 1, EMA 0.97 target, shift 5.
  python -m train.distill --config configs/train/step_distill.py:model=t2v_1_3b --workdir runs/half \
      --config.models.teacher.weights=runs/cfgd/export --config.data.latents=features/   # as cfg_distill.py
  python -m infer.sample --config configs/sample/t2v_1_3b.py --config.weights=runs/half/export \
      --config.guidance=5 --config.num_steps=20 ...
Smoke (tiny random models, CPU, < 1 min):
  python -m train.distill --config configs/train/step_distill.py:smoke=True --workdir /tmp/half
  python -m train.distill --config configs/train/step_distill.py:smoke=True,mode=consistency --workdir /tmp/cd
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", mode="half2", smoke=False)
  c = common.train_defaults(arg)
  c.objective = "step_distill"
  consistency = arg.mode == "consistency"
  # Models: teacher = the CFG-distilled model (guidance embedded); the student starts from the same weights.
  c.models = ml_collections.ConfigDict()
  c.models.teacher = common.model(arg.model, guidance_embed=True)
  c.models.generator = common.model(arg.model, guidance_embed=True)   # weights '' = the teacher's
  # Objective (A.4). w ~ U{w_min..w_max} (cfg 5 -> 3..8), shared by student and teacher.
  c.step_distill = ml_collections.ConfigDict(dict(
      mode=arg.mode, w_min=3, w_max=8, huber_c=1e-3,
      shift=5.0 if consistency else 3.0,
      interval_steps=10, k=1, use_ema=consistency,       # consistency: grid N, k teacher steps, EMA target
      student_steps=20, half2_target="two_step",          # half2: student grid N (teacher 2N); "reference"
  ))
  # Optimiser: AdamW lr 1e-6 as the CFG stage; EMA 0.97 for the consistency target.
  c.generator = common.trainee(lr=1e-6, b1=0.9, weight_decay=1e-3, clip=1.0,
                               ema_decay=0.97 if consistency else 0.0)
  # Cadence.
  c.total_steps = 1000
  c.checkpoint_every = 50 if consistency else 100
  c.export = "export"          # converted model dir (relative to the workdir); '' = none
  c.export_ema = True          # the reference saves the EMA model when it keeps one
  c.data.latents = ""
  c.data.latent_shape = ()     # (F, H, W); () = the shape of data.latents (an explicit one must match it)
  c = common.maybe_smoke(c, arg.smoke)
  if arg.smoke:
    c.total_steps, c.checkpoint_every = 3, 3
    c.step_distill.interval_steps, c.step_distill.student_steps = 6, 3
  return c
