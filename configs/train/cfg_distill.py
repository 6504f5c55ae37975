"""CFG distillation (distill_wan2.1 `distill_cfg.py`, spec post_training.md A.3): a guidance-embedded student
learns v_u + w·(v_c − v_u) of the frozen teacher, w ~ U{1..8}; afterwards one forward per sampling step.

  python -m train.distill --config configs/train/cfg_distill.py:model=t2v_1_3b --workdir runs/cfgd \
      --config.models.teacher.weights=ckpt/t2v_1_3b --config.data.latents=features/   # train.preprocess folder
  python -m infer.sample --config configs/sample/t2v_1_3b.py --config.weights=runs/cfgd/export \
      --config.guidance=5 ...
Smoke (tiny random models, CPU, < 1 min):
  python -m train.distill --config configs/train/cfg_distill.py:smoke=True --workdir /tmp/cfgd
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", smoke=False)
  c = common.train_defaults(arg)
  c.objective = "cfg_distill"
  # Models: the teacher (plain Wan) and the student (teacher + zero-initialised guidance MLP, full fine-tune).
  c.models = ml_collections.ConfigDict()
  c.models.teacher = common.model(arg.model)
  c.models.generator = common.model(arg.model, guidance_embed=True)   # weights '' = from the teacher
  # Objective (A.3): w ~ U{w_min..w_max} per step; 50-point shifted Euler grid; pseudo-Huber c = 0.001.
  c.cfg_distill = ml_collections.ConfigDict(dict(w_min=1, w_max=8, shift=5.0, grid_points=50, huber_c=1e-3))
  # Optimiser (A.3): AdamW lr 1e-6, betas 0.9/0.999, weight decay 1e-3, constant LR, clip 1.0; EMA off.
  c.generator = common.trainee(lr=1e-6, b1=0.9, weight_decay=1e-3, clip=1.0)
  # Cadence: a few hundred steps suffice (checkpoints 400-500 were used downstream).
  c.total_steps = 1000
  c.checkpoint_every = 50
  # Export: a converted model dir (relative to the workdir) for infer.sample / step_distill; '' = none.
  c.export = "export"
  c.export_ema = True          # export the EMA weights when an EMA is kept
  # Data: a train.preprocess folder (its cached contexts, or data.prompts encoded again) or latent shards
  # [N, F, H, W, 16] paired by index with data.prompts; smoke: random latents of data.latent_shape.
  c.data.latents = ""
  c.data.latent_shape = ()     # (F, H, W); () = the shape of data.latents (an explicit one must match it)
  c = common.maybe_smoke(c, arg.smoke)
  if arg.smoke:
    c.total_steps, c.checkpoint_every = 3, 3
  return c
