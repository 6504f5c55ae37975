"""LightX2V CausVid (legacy `wan2.1_causvid` runner, spec distillation.md §4.4–4.5): 9-step list
(999, 934, 862, 756, 603, 410, 250, 140, 74), `num_fragments` long videos (21 + (n−1)·18 latent frames).

Quirk §4.5, chosen on purpose: the original scheduler (Apr–Jun 2025) uses the list directly (σ = t/1000) with
Wan's UniPC update (`:rewarp` gives the later re-warp at shift 8 with fresh-noise re-noise). Quirk §4.4: no clean
context pass (each block's cache holds its last noisy input's K/V); a new fragment re-runs the previous last
block at the last timestep into slot 0.

python -m infer.sample --config configs/sample/causvid_lightx2v.py:fragments=3 \
  --config.weights=/ckpt/causvid_lightx2v.safetensors --config.text_encoder=/ckpt/umt5 \
  --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae --config.prompt=...
"""

from configs import common
from configs.sample import self_forcing


def get_config(arg=None):
  arg = common.parse_arg(arg, fragments=1, rewarp=False, runlocal=False)
  c = self_forcing.get_config()
  c.timesteps = (999, 934, 862, 756, 603, 410, 250, 140, 74)
  c.num_steps = 9
  c.shift = 8.0
  c.solver = "consistency" if arg.rewarp else "unipc"
  c.ar.warp = arg.rewarp
  c.ar.sigma_lookup = "grid" if arg.rewarp else "exact"
  c.ar.context_pass = False
  if arg.fragments > 1:
    c.ar.long_video = "fragments"
    c.ar.num_segments = arg.fragments
  return self_forcing.maybe_runlocal(c, arg.runlocal)
