"""Wan2.1 VAE (`wan/modules/vae.py`) in Flax NNX, channels-last."""

from wanjax.vae.config import PRESETS, VAEConfig, get_config
from wanjax.vae.model import WanVAE, create_vae, decode_latent, encode_video

__all__ = ["PRESETS", "VAEConfig", "WanVAE", "create_vae", "decode_latent", "encode_video", "get_config"]
