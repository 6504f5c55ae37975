"""Toy-world 1-step DMD student (DMD2's one-step generator): `toyworld_dmd` with the step list (1000,), 600 steps.

Why it exists: this toy teacher's probability-flow ODE is nearly straight, so the teacher at 4 UniPC steps already
matches its 50-step samples and the 4-step table cannot show what distillation buys. At one step the teacher
falls clearly below its 50-step self; this student is the row that shows the gap closed (README, Distillation
table). The generator always starts from pure noise (t = 1000) and is scored on its x0 prediction.

  python -m train.distill --config configs/train/toyworld_dmd1.py --workdir runs/toyworld/dmd1 \
      --config.models.generator.weights=ckpt/teacher --config.models.teacher.weights=ckpt/teacher \
      --config.models.critic.weights=ckpt/teacher --config.data.prompts=data/toyworld \
      --config.data.text_encoder=ckpt/umt5 --config.data.tokenizer=ckpt/tokenizer
  python -m train.export --config configs/train/toyworld_dmd1.py --workdir runs/toyworld/dmd1 --out ckpt/dmd1 --ema
  python -m infer.sample --config configs/sample/toyworld.py:model=dmd1
Smoke: configs/train/toyworld_dmd1.py:smoke=True. Whole pipeline: scripts/train_toyworld.py (stage dmd1).
"""

from configs.train import toyworld_dmd


def get_config(arg=None):
  # One generator step from pure noise, trained twice as long as the 4-step student (300 steps scored 83 % of the
  # CPU teacher, 600 scored 95 %); everything else as the 4-step student.
  return toyworld_dmd.few_step(arg, (1000,), total_steps=600)
