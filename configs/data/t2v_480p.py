"""T2V features at 480×832 (and 832×480, 624×624 buckets), 81 frames at 16 fps, bf16 storage.

  python -m train.preprocess --config configs/data/t2v_480p.py --input clips/ --output features/t2v_480p \
      --config.vae=ckpt/Wan2.1_VAE.pth --config.text_encoder=ckpt/models_t5_umt5-xxl-enc-bf16.pth \
      --config.tokenizer=ckpt/google/umt5-xxl
  Variants: configs/data/t2v_480p.py:fixed=True  (832*480 only; other aspects are cropped up to 25%, else skipped)
"""

from configs.common import parse_arg
from configs.data import common


def get_config(arg=None):
  arg = parse_arg(arg, fixed=False)
  c = common.preprocess_defaults()
  c.model_type = "t2v"
  c.sizes = ("832*480",) if arg.fixed else ("832*480", "480*832", "624*624")
  return c
