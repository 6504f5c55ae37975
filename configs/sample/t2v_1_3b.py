"""Wan2.1 T2V-1.3B: as t2v_14b at 832x480 (the README suggests shift 8–12 and CFG 6 for this model).

python -m infer.sample --config configs/sample/t2v_1_3b.py --config.weights=/ckpt/Wan2.1-T2V-1.3B \
  --config.text_encoder=/ckpt/umt5 --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae --config.prompt=...
"""

from configs.sample import t2v_14b


def get_config(arg=None):
  c = t2v_14b.get_config("model=t2v_1_3b" + ("," + arg if arg else ""))
  c.size = "832*480"
  return c
