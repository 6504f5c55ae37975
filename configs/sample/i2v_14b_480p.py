"""Wan2.1 I2V-14B-480P: UniPC 40 steps, shift 3, CFG 5, area 832*480 with the image's aspect (§6.5, §1.14).

python -m infer.sample --config configs/sample/i2v_14b_480p.py --config.weights=/ckpt/Wan2.1-I2V-14B-480P \
  --config.text_encoder=/ckpt/umt5 --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae \
  --config.clip=/ckpt/clip --config.image=cat.png --config.prompt="The cat starts to dance"
"""

from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, area="832*480", shift=3.0)
  c = common.sample_defaults(arg)
  c.model = "i2v_14b"
  c.size = arg.area       # I2V: pixel area; the aspect ratio comes from the input image
  c.solver = "unipc"
  c.num_steps = 40
  c.shift = arg.shift
  c.cfg_scale = 5.0
  return c
