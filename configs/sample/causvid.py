"""CausVid causal T2V-1.3B (spec distillation.md §3.4, §4.2, §4.4): blocks of 3, steps (1000, 757, 522) used
directly at shift 8 (σ from the nearest grid point: 1, 0.75676, 0.52174), fresh-noise re-noise, clean context pass.
`:rollouts=3` makes CausVid's long video (independent rollouts chained by a VAE re-encoded 3-frame overlap, 72
pixel frames each).

python -m infer.sample --config configs/sample/causvid.py:rollouts=3 --config.weights=/ckpt/causvid_model.pt \
  --config.text_encoder=/ckpt/umt5 --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae --config.prompt=...
"""

from configs import common
from configs.sample import self_forcing


def get_config(arg=None):
  arg = common.parse_arg(arg, rollouts=1, runlocal=False)
  c = self_forcing.get_config()
  c.timesteps = (1000, 757, 522)
  c.num_steps = 3
  c.shift = 8.0
  c.ar.warp = False
  if arg.rollouts > 1:
    c.ar.long_video = "rollouts"
    c.ar.num_segments = arg.rollouts
  return self_forcing.maybe_runlocal(c, arg.runlocal)
