"""Toy-world preset: the small trained models of `wanjax/toyworld/checkpoints/` (umT5, VAE, DiT), 64×64×17 on CPU.

  python -m infer.sample --config configs/sample/toyworld.py --config.output_dir=/tmp/out
  python -m infer.sample --config configs/sample/toyworld.py:model=teacher --config.prompt="a large red circle \
moves left quickly"
Variants (model=...): dmd (4-step student, CFG off; default) | dmd2 / dmd1 (2- / 1-step DMD students) | teacher (50-step
UniPC, CFG 4) | teacher4 (the teacher at the student's 4 UniPC steps; teacherN: at N steps, e.g. teacher2) |
teacher_dmd_sampler (the teacher, CFG 4, in the 4-step DMD student's own sampler: the same step list and fresh
noise between steps) | sf (causal Self-Forcing student: 5 blocks of 1 latent frame, 4 steps, streamed). root=DIR reads the checkpoints from
another folder (e.g. a smoke run's).
Checkpoints: scripts/train_toyworld.py writes them (docs/toyworld.md).
"""

import os
import re

from configs import common
from configs.sample import self_forcing
from wanjax.toyworld.dataset import HELDOUT_PROMPTS

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "wanjax",
                    "toyworld", "checkpoints")
MODELS = ("dmd", "dmd2", "dmd1", "teacher", "teacher4", "teacher_dmd_sampler", "sf")   # and teacherN for any N >= 1 (the teacher at N UniPC steps)


def get_config(arg=None):
  arg = common.parse_arg(arg, model="dmd", root="")
  few = re.fullmatch(r"teacher([1-9][0-9]*)", arg.model)
  if arg.model not in MODELS and not few:
    raise common.UsageError(f"toyworld model={arg.model!r}; valid: {', '.join(MODELS)}, or teacherN (the teacher "
                            f"at N steps, e.g. teacher2)")
  root = arg.root or ROOT
  c = common.sample_defaults(arg)
  c.model = "toyworld"                      # DiT preset: text_dim 32, text_len 32
  c.weights = os.path.join(root, "teacher" if arg.model.startswith("teacher") else arg.model)
  c.text_encoder = os.path.join(root, "umt5")
  c.tokenizer = os.path.join(root, "tokenizer")
  c.vae = os.path.join(root, "vae")
  c.dtype = "float32"
  c.prompt = HELDOUT_PROMPTS[16]            # first two-object held-out prompt
  c.prompt_grammar = "toyworld"             # other prompts fail at the edge (their words would all be <unk>)
  c.size = "64*64"
  c.frames = 17
  c.shift = 5.0
  if arg.model == "sf":
    c.distilled = True
    c.sampler = "ar"                        # block-wise autoregressive with the static KV cache
    c.solver = "consistency"
    c.timesteps = (1000, 750, 500, 250)
    c.num_steps = 4
    c.cfg_scale = 1.0
    c.ar = self_forcing.ar_defaults(nfpb=1)
    c.ar.cache_frames = 5                   # the whole clip (17 frames -> 5 latent frames)
    c.renoise = ""
    c.stream = True
  elif arg.model in ("dmd", "dmd2", "dmd1"):
    c.distilled = True
    c.solver = "consistency"                # fresh noise between steps, as DMD trains
    c.timesteps = (1000, 750, 500, 250)     # warped by shift 5 to the trained list (1000, 937.5, 833.3, 625)
    c.num_steps = 4                         # = len(timesteps): the step list sets the steps (recorded in the JSON)
    if arg.model == "dmd2":
      c.timesteps = (1000, 500)             # warped to (1000, 833.3) (configs/train/toyworld_dmd2.py)
      c.num_steps = 2
    if arg.model == "dmd1":
      c.timesteps = (1000,)                 # one step from pure noise (configs/train/toyworld_dmd1.py)
      c.num_steps = 1
    c.cfg_scale = 1.0
  elif arg.model == "teacher_dmd_sampler":
    # The ablation for "what does distillation buy": the dmd row's sampler exactly, the teacher's weights, and
    # the teacher's CFG (it is not CFG-distilled). Not `distilled`: that flag is for step-distilled weights.
    c.solver = "consistency"
    c.timesteps = (1000, 750, 500, 250)
    c.num_steps = 4
    c.cfg_scale = 4.0
  else:
    c.num_steps = int(few.group(1)) if few else 50
    c.cfg_scale = 4.0                       # standard form of the DMD teacher's SF-form guidance 3.0
  c.compilation_cache = ""
  return c
