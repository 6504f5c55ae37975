"""Wan2.1 T2V-14B: UniPC 50 steps, shift 5, CFG 5, 1280x720, 81 frames (spec wan_model.md §6.5).

python -m infer.sample --config configs/sample/t2v_14b.py --config.weights=/ckpt/Wan2.1-T2V-14B \
  --config.text_encoder=/ckpt/umt5 --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae \
  --config.prompt="A cat surfing a wave at sunset"
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_14b")
  c = common.sample_defaults(arg)
  c.model = arg.model
  c.size = "1280*720"     # the reference CLI default; 832*480 also works
  c.solver = "unipc"
  c.num_steps = 50
  c.shift = 5.0
  c.cfg_scale = 5.0
  return c
