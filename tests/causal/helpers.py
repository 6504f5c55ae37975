"""Shared pieces of the causal (AR) tests: a tiny random fp32 DiT with every parameter randomised (zero-init head
included), drawn with NumPy on the abstract model so nothing compiles per parameter shape."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax.dit.config import DiTConfig
from wanjax.dit.model import WanDiT

# Mutually different sizes: D 24 (2 heads × 12), ffn 40, text_dim 20, 5 text rows, latent 4×6 (2×3 tokens/frame).
CFG = DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=3, text_dim=20, text_len=5, freq_dim=32)
H, W, C = 4, 6, 16
TOKENS_PER_FRAME = (H // 2) * (W // 2)


def random_dit(seed=0, cfg=CFG, **kwargs):
  return randomized(lambda: WanDiT(cfg, rngs=nnx.Rngs(0), **kwargs), seed)


def random_vae(seed=3):
  from wanjax.vae.config import get_config
  from wanjax.vae.model import WanVAE
  return randomized(lambda: WanVAE(get_config("tiny"), rngs=nnx.Rngs(0)), seed)


def randomized(build, seed):
  """`build()` with every parameter drawn: kernels N(0, 1/fan_in), norm scales 1 ± 0.2, the rest N(0, 0.3²)."""
  graphdef, state = nnx.split(nnx.eval_shape(build))
  rng = np.random.default_rng(seed)
  new = []
  for path, var in nnx.to_flat_state(state):
    shape = var.get_value().shape
    if path[-1] == "kernel":
      fan_in = int(np.prod(shape[:-1])) if len(shape) >= 4 else shape[-2]   # convs vs (stacked) dense
      value = rng.standard_normal(shape) / np.sqrt(fan_in)
    elif path[-1] == "scale":
      value = 1.0 + 0.2 * rng.standard_normal(shape)
    else:
      value = 0.3 * rng.standard_normal(shape)
    new.append((path, var.replace(jnp.asarray(value, var.get_value().dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(new))


def context(seed=1, batch=1):
  return np.random.default_rng(seed).standard_normal((batch, CFG.text_len, CFG.text_dim)).astype(np.float32)


def latents(frames, seed=2, batch=1):
  return np.random.default_rng(seed).standard_normal((batch, frames, H, W, C)).astype(np.float32)
