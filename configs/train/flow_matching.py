"""Plain flow-matching training of a Wan DiT on precomputed latents (e.g. the toy-world teacher).

  python -m train.flow_matching --config configs/train/flow_matching.py:model=t2v_1_3b --workdir runs/fm \
      --config.data.latents=latents/ --config.data.prompts=prompts.txt --config.data.text_encoder=ckpt/umt5
  python -m train.flow_matching --config configs/train/flow_matching.py:smoke=True --workdir /tmp/fm
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", smoke=False)
  c = common.train_defaults(arg)
  c.objective = "flow_matching"
  # Models.
  c.models = ml_collections.ConfigDict()
  c.models.generator = common.model(arg.model)
  # Objective: sigma = shift(u), u ~ U(0, 1).
  c.flow = ml_collections.ConfigDict(dict(shift=5.0))
  # Optimisers (standard AdamW betas for pre-training/fine-tuning).
  c.generator = common.trainee(lr=1e-4, b1=0.9, clip=1.0)
  # Cadence.
  c.total_steps = 10000
  c.checkpoint_every = 500
  # Data: latent shards [N, F, H, W, 16] paired by index with the prompts.
  c.data.latents = ""
  return common.maybe_smoke(c, arg.smoke)
