"""Toy-world step distillation, mode half2 (post_training.md A.4): the CFG-distilled toy model (teacher, frozen)
on its 50-step UniPC grid is halved to a 25-step student (student node i = teacher node 2i; the target is the
teacher's two Euler steps written in x0 form). Shift 5, the toy sampler's, so the student's grid is the one
`infer.sample --config.num_steps=25` samples on; guidance w ~ U{2..6} around the toy CFG 4 (the reference
draws 3..8 around its cfg 5).

  python -m train.distill --config configs/train/toyworld_step_distill.py --workdir runs/toyworld_post/half2 \
      --config.models.teacher.weights=runs/toyworld_post/cfgd/export \
      --config.data.latents=runs/toyworld/features
  # -> runs/toyworld_post/half2/export; sample with --config.guidance=4 --config.num_steps=25
Smoke: configs/train/toyworld_step_distill.py:smoke=True (32×32×5 features). Whole demo:
scripts/post_train_toyworld.py.
"""

from configs import train_common as common
from configs.train import step_distill


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  c = step_distill.get_config("model=toyworld,mode=half2")
  # Models: fp32, no remat (common.toyworld, below); teacher = the exported CFG-distilled toy model (set by the
  # pipeline script).
  # Objective: teacher grid 50 -> student grid 25 at the toy shift 5; w ~ U{2..6}.
  c.step_distill.shift = 5.0
  c.step_distill.student_steps = 25
  c.step_distill.w_min, c.step_distill.w_max = 2, 6
  # Optimiser: as the CFG stage (no EMA in half2: the target is the frozen teacher).
  c.generator = common.trainee(lr=1e-4, b1=0.9, b2=0.99, weight_decay=1e-3, clip=1.0)
  # Cadence: ~0.45 s/step at batch 16 on the shared 2-core CPU (measured) -> ~5 minutes.
  c.total_steps = 600
  c.checkpoint_every = 200
  c.log_every = 25
  # Data: as toyworld_cfg_distill (feature folder + its captions); 5×8×8 latents.
  common.toyworld(c, arg.smoke, batch_size=16, smoke_batch_size=4)
  c.data.latent_shape = ()     # read from the feature folder (5×8×8; 2×4×4 in the smoke run)
  return c
