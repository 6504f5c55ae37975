"""DMD smoke run used by the tests: tiny random DiTs, 12 steps on CPU, checkpoints every 4 steps.

  python -m train.distill --config configs/train/dmd_smoke.py --workdir /tmp/dmd_smoke
"""

from configs.train import dmd_bidirectional


def get_config(arg=None):
  c = dmd_bidirectional.get_config("smoke=True" + ("," + arg if arg else ""))
  c.dmd.critic_steps_per_generator_step = 3
  c.generator.ema_start = 4
  return c
