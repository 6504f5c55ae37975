"""Toy-world 2-step DMD student: `toyworld_dmd` with the step list (1000, 500) (σ 1 and 0.833 after the shift-5 warp).

Why it exists: the teacher's step curve (docs/toyworld.md) is clearly below its 50-step score at 2 and 3 UniPC
steps and only 2 % below at 4, so the 2-step rows are where the table shows what distillation buys at a budget
the teacher cannot meet.

  python -m train.distill --config configs/train/toyworld_dmd2.py --workdir runs/toyworld/dmd2 \
      --config.models.generator.weights=ckpt/teacher --config.models.teacher.weights=ckpt/teacher \
      --config.models.critic.weights=ckpt/teacher --config.data.prompts=data/toyworld \
      --config.data.text_encoder=ckpt/umt5 --config.data.tokenizer=ckpt/tokenizer
  python -m train.export --config configs/train/toyworld_dmd2.py --workdir runs/toyworld/dmd2 --out ckpt/dmd2 --ema
  python -m infer.sample --config configs/sample/toyworld.py:model=dmd2
Smoke: configs/train/toyworld_dmd2.py:smoke=True. Whole pipeline: scripts/train_toyworld.py (stage dmd2).
"""

from configs import train_common as common
from configs.train import toyworld_dmd


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  c = toyworld_dmd.get_config(f"smoke={arg.smoke}")
  c.dmd.timesteps = (1000, 500)   # two generator steps; everything else as the 4-step student
  return c
