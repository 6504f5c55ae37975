"""Toy-world DiT teacher: flow matching on cached VAE latents + frozen umT5 contexts, with CFG dropout.

Data: a `train.preprocess` feature folder (latents 5×8×8×16 and contexts of 64×64×17 clips, encoded with the
exported toy-world VAE and umT5); 10 % of the contexts are replaced by the cached unconditional one (the
negative prompt's embedding: the same context `infer.sample` and DMD use for CFG).

  python -m train.flow_matching --config configs/train/toyworld_teacher.py --workdir runs/toyworld/teacher \
      --config.data.latents=features/toyworld
  python -m train.export --config configs/train/toyworld_teacher.py --workdir runs/toyworld/teacher --out ckpt/teacher
Smoke: configs/train/toyworld_teacher.py:smoke=True (a few steps, CPU). Whole pipeline: scripts/train_toyworld.py.
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  c = common.train_defaults(arg)
  c.objective = "flow_matching"
  # Models: the `toyworld` DiT preset (dim 128, 4 layers, 4 heads of 32, patch (1, 2, 2); 1.25 M params).
  c.models = ml_collections.ConfigDict()
  c.models.generator = common.model("toyworld", precision="float32", remat="none")
  # Objective: sigma = shift(u), u ~ U(0, 1); text dropout to the unconditional context for CFG.
  c.flow = ml_collections.ConfigDict(dict(shift=5.0, cfg_dropout=0.1, uncond="negative"))
  # Optimiser.
  c.generator = common.trainee(lr=3e-4, b1=0.9, b2=0.99, weight_decay=0.0, clip=1.0)
  # Cadence.
  c.total_steps = 6000
  c.checkpoint_every = 1000
  c.log_every = 50
  # Data: feature folder (latents + contexts); prompts come with it.
  c.data.latents = ""
  return common.toyworld(c, arg.smoke, batch_size=32, smoke_batch_size=4)
