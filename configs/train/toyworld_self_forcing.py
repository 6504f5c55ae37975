"""Toy-world causal Self-Forcing student (spec distillation.md §1, §4): DMD with backward simulation through the
KV cache, 1 latent frame per block, from the toy-world ODE-init checkpoint; teacher and critic are the toy-world
teacher. Same objective settings as the bidirectional toy student (`toyworld_dmd.py`).

  python -m train.distill --config configs/train/toyworld_self_forcing.py --workdir runs/toyworld/sf \
      --config.models.generator.weights=ckpt/sf_ode --config.models.teacher.weights=ckpt/teacher \
      --config.models.critic.weights=ckpt/teacher --config.data.prompts=data/toyworld \
      --config.data.text_encoder=ckpt/umt5 --config.data.tokenizer=ckpt/tokenizer
  python -m train.export --config configs/train/toyworld_self_forcing.py --workdir runs/toyworld/sf --out ckpt/sf --ema
Smoke: configs/train/toyworld_self_forcing.py:smoke=True. Whole pipeline: scripts/train_toyworld.py.
"""

from configs import train_common as common
from configs.train import self_forcing


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  c = self_forcing.get_config("model=toyworld,teacher=toyworld")
  c.rollout.frames_per_block = 1            # 5 latent frames -> 5 blocks
  c.dmd.guidance_scale = 3.0                # SF form (standard 4.0), as the teacher samples
  c.dmd.critic_steps_per_generator_step = 5
  c.generator = common.trainee(lr=2e-5, ema_decay=0.99, ema_start=100)
  c.critic = common.trainee(lr=2e-5)
  c.total_steps = 2000                      # 1,000 scored 88 % of the CPU teacher, 2,000 scored 100 % (docs/toyworld.md)
  c.checkpoint_every = 500
  c.log_every = 25
  if arg.smoke:
    c.dmd.critic_steps_per_generator_step = 3
    c.generator.ema_start = 3
  return common.toyworld(c, arg.smoke, batch_size=8)   # fp32, no remat, 5x8x8 latents, smoke sizes
