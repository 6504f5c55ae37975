"""ODE-initialisation regression on teacher trajectories (spec distillation.md §2.2; CausVid/SF `ode_regression`).

Trajectory shards hold `latents` [N, K, F, H, W, 16] (teacher latents at the step list + the final 0) and
`context` [N, S, D]. frames_per_block=0 regresses a bidirectional student (one index per sample); 3 gives the
causal block layout (block-causal mask).

  python -m train.distill --config configs/train/ode_init.py --workdir runs/ode \
      --config.models.generator.weights=ckpt/t2v_1_3b --config.data.trajectories=ode_pairs/
  python -m train.distill --config configs/train/ode_init.py:smoke=True --workdir /tmp/ode
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", smoke=False)
  c = common.train_defaults(arg)
  c.objective = "ode_init"
  # Models.
  c.models = ml_collections.ConfigDict()
  c.models.generator = common.model(arg.model)
  # Objective: SF script list, warped at shift 8 (Quirk: §2.1, the DMD stage then uses shift 5).
  c.dmd = common.dmd_objective(shift=8.0, critic_steps_per_generator_step=1)
  c.ode = ml_collections.ConfigDict(dict(frames_per_block=0))
  # Optimisers (CausVid: AdamW betas (0.9, 0.999), lr 2e-6, clip 10).
  c.generator = common.trainee(lr=2e-6, b1=0.9)
  # Cadence.
  c.total_steps = 3000
  c.checkpoint_every = 200
  # Data.
  c.data.trajectories = ""
  return common.maybe_smoke(c, arg.smoke)
