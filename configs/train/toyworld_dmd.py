"""Toy-world 4-step DMD student (bidirectional), distilled from the toy-world teacher (spec distillation.md §1).

Generator, critic and teacher all start from the exported teacher; prompts are the training captions encoded
with the frozen toy-world umT5 (same contexts the teacher saw); the uncond context is the negative prompt's, as
in the teacher's CFG dropout. Learning rates are scaled up from the 14B recipe for 1.25 M-parameter models.

  python -m train.distill --config configs/train/toyworld_dmd.py --workdir runs/toyworld/dmd \
      --config.models.generator.weights=ckpt/teacher --config.models.teacher.weights=ckpt/teacher \
      --config.models.critic.weights=ckpt/teacher --config.data.prompts=data/toyworld \
      --config.data.text_encoder=ckpt/umt5 --config.data.tokenizer=ckpt/tokenizer
  python -m train.export --config configs/train/toyworld_dmd.py --workdir runs/toyworld/dmd --out ckpt/dmd --ema
Smoke: configs/train/toyworld_dmd.py:smoke=True. Whole pipeline: scripts/train_toyworld.py.
"""

from configs import train_common as common
from configs.train import dmd_bidirectional


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  c = dmd_bidirectional.get_config("model=toyworld")
  # Models: fp32, no remat (common.toyworld, below); weights = the exported teacher (set by the pipeline script).
  # Objective: the 14B recipe's warped 4-step list and SF-form CFG; guidance 3.0 (standard 4.0).
  c.dmd.guidance_scale = 3.0
  # Optimisers: the student starts from the (50-step) teacher, not from an ODE-init few-step model, so it must
  # move further than SF's 2e-6 recipe allows in a CPU budget of ~100 generator updates: generator 5e-5, critic
  # 1e-4 (two time-scale), 3 critic steps per generator step, EMA 0.95 from step 150.
  c.dmd.critic_steps_per_generator_step = 3
  c.generator = common.trainee(lr=5e-5, ema_decay=0.95, ema_start=150)
  c.critic = common.trainee(lr=1e-4)
  # Cadence.
  c.total_steps = 300
  c.checkpoint_every = 100
  c.log_every = 25
  if arg.smoke:
    c.generator.ema_start = 3
  # Data: caption folder (one .txt per clip) and the toy umT5; 5×8×8 latents (64×64×17).
  return common.toyworld(c, arg.smoke, batch_size=8)


def few_step(arg, timesteps, total_steps=None):
  """This recipe with another generator step list (and step count; smoke runs keep theirs): the 2- and 1-step
  students' configs (`toyworld_dmd2.py`, `toyworld_dmd1.py`)."""
  arg = common.parse_arg(arg, smoke=False)
  c = get_config(f"smoke={arg.smoke}")
  c.dmd.timesteps = tuple(timesteps)
  if total_steps and not arg.smoke:
    c.total_steps = total_steps
  return c
