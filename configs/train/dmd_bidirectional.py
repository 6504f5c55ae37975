"""DMD2 step distillation of a bidirectional Wan DiT, Self-Forcing-Plus style (spec distillation.md §1, §3.2).

Generator, teacher (real score) and critic (fake score) all start from one base model; 4-step student with
the warped list [1000, 937.5, 833.33, 625], SF-form CFG 5.0 (standard 6.0), 1 generator step per 5 critic
steps, EMA 0.99 from step 200.

  python -m train.distill --config configs/train/dmd_bidirectional.py:model=t2v_14b \
      --config.models.generator.weights=ckpt/t2v_14b --config.data.prompts=prompts/ --workdir runs/dmd14b
Smoke (tiny random models, CPU, < 2 min):
  python -m train.distill --config configs/train/dmd_bidirectional.py:smoke=True --workdir /tmp/dmd
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", smoke=False)
  c = common.train_defaults(arg)
  c.objective = "dmd"
  # Models: one base; teacher and critic weights default to the generator's (SF+: real = fake = generator).
  c.models = ml_collections.ConfigDict()
  c.models.generator = common.model(arg.model)
  c.models.teacher = common.model(arg.model, weights_from="generator")
  c.models.critic = common.model(arg.model, weights_from="generator")
  # Objective (SF:configs/self_forcing_dmd.yaml, SF+ bidirectional overrides).
  c.dmd = common.dmd_objective(guidance_scale=5.0)   # SF+ bidirectional: SF form 5.0 (standard 6.0)
  # Optimisers.
  c.generator = common.trainee(lr=2e-6, ema_decay=0.99, ema_start=200)
  c.critic = common.trainee(lr=4e-7)
  # Cadence.
  c.total_steps = 3000
  c.checkpoint_every = 200
  return common.maybe_smoke(c, arg.smoke)
