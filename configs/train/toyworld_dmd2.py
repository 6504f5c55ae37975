"""Toy-world 2-step DMD student: `toyworld_dmd` with the step list (1000, 500) (σ 1 and 0.833 after the shift-5 warp).

Why it exists: the teacher's step curve (docs/toyworld.md) is clearly below its 50-step score at 2 and 3 UniPC
steps and only 2 % below at 4, so the 2-step rows are where the table shows what distillation buys at a budget
the teacher cannot meet.

Train, export and sample as `toyworld_dmd1.py` with `dmd2` in place of `dmd1` (stage dmd2 of
scripts/train_toyworld.py; `configs/sample/toyworld.py:model=dmd2`).
"""

from configs.train import toyworld_dmd


def get_config(arg=None):
  return toyworld_dmd.few_step(arg, (1000, 500))   # two generator steps; everything else as the 4-step student
