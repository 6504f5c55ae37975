"""Toy-world features with tiny random encoders built from the seed (tests and CPU smoke runs, seconds).

  python -m wanjax.toyworld.dataset --out /tmp/toy --n 8 --frames 17 --size 64
  python -m train.preprocess --config configs/data/toyworld.py --input /tmp/toy --output /tmp/toy_feat
  Variants: configs/data/toyworld.py:i2v=True (adds clip_fea and y with a tiny CLIP)
"""

from configs.common import parse_arg
from configs.data import common


def get_config(arg=None):
  arg = parse_arg(arg, i2v=False)
  c = common.preprocess_defaults()
  c.model_type = "i2v" if arg.i2v else "t2v"
  c.random_encoders = True      # tiny VAE, tiny umT5 with the toy-world vocabulary, tiny CLIP
  c.vae_dtype = c.text_dtype = c.clip_dtype = "float32"
  c.frames = 9                  # every second frame of a 17-frame, 16 fps toy clip
  c.fps = 8.0
  c.sizes = ("64*64",)
  c.text_len = 32
  c.dtype = "float32"           # exact round trips in the tests
  c.clips_per_shard = 4
  c.batch_size = 2
  c.mesh = "data=-1"             # all devices (the tests run 8 fake CPU devices: batch of 2 over data=2)
  c.num_workers = 2
  return c
