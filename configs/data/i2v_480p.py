"""I2V features at 480p: latent, context, and the first frame's CLIP features and 20-channel `y` (spec A.1).

  python -m train.preprocess --config configs/data/i2v_480p.py --input clips/ --output features/i2v_480p \
      --config.vae=ckpt/Wan2.1_VAE.pth --config.text_encoder=ckpt/models_t5_umt5-xxl-enc-bf16.pth \
      --config.tokenizer=ckpt/google/umt5-xxl \
      --config.clip=ckpt/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth
"""

from configs.data import t2v_480p


def get_config(arg=None):
  c = t2v_480p.get_config(arg)
  c.model_type = "i2v"
  return c
