"""Random stand-ins for the tiny CPU demo and tests: host-drawn random model parameters, hashed text contexts,
and the CLIP preset a random I2V demo uses.

Only `configs/sample/tiny.py` (`random_init=True`, `:i2v` for image-to-video) and tests use these; real presets
load converted weights.
"""

import zlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax import sharding as shd


def random_model(build, seed, *, mesh=None, rules=shd.RULES):
  """The model `build()` makes, with host-drawn torch-default-like random parameters (every one random, unlike
  the reference init that zeroes the head), placed on `mesh` by the logical-axis `rules` when a mesh is given
  (as loaded weights are; default: jax's default device).

  Kernels and their biases ~ U(±1/√fan_in), norm scales 1 and shifts 0, modulation tables N(0, 1/dim), CLIP
  class/position embeddings N(0, 1/width) (the reference init). Drawn
  with NumPy on an abstract model: eager construction compiles one small program per parameter shape (minutes
  on a busy CPU).
  """
  graphdef, state = nnx.split(nnx.eval_shape(build))
  rng = np.random.default_rng(seed)
  flat = list(nnx.to_flat_state(state))
  fan_in = {}
  for path, var in flat:
    if path[-1] == "kernel":
      shape, n_layers = var.get_value().shape, shd.param_axes(var).count("layers")
      fan_in[path[:-1]] = int(np.prod(shape[n_layers:-1]))
  new = []
  for path, var in flat:
    shape, dtype = var.get_value().shape, var.get_value().dtype
    if path[-1] in ("kernel", "bias") and path[:-1] in fan_in:
      bound = 1.0 / np.sqrt(fan_in[path[:-1]])
      value = rng.uniform(-bound, bound, shape)
    elif path[-1] in ("modulation", "cls_embedding", "pos_embedding"):
      value = rng.standard_normal(shape) / np.sqrt(shape[-1])
    elif path[-1] in ("scale", "weight", "gamma"):
      value = np.ones(shape)
    elif path[-1] == "bias":   # affine norm shift
      value = np.zeros(shape)
    else:
      raise ValueError(f"random_model: no rule for parameter {'.'.join(map(str, path))} {shape}")
    new.append((path, var.replace(jnp.asarray(value, dtype))))
  state = nnx.from_flat_state(new)
  if mesh is not None:
    import jax
    state = jax.device_put(state, shd.state_shardings(state, mesh, rules))
  return nnx.merge(graphdef, state)


def hashed_context(prompt, text_len, text_dim):
  """Tiny demo only: a fixed pseudo-random context per prompt (no umT5 of matching width exists at that size)."""
  rng = np.random.default_rng(zlib.crc32(prompt.encode("utf-8")))
  return rng.standard_normal((1, text_len, text_dim), dtype=np.float32)


def clip_preset_for(dit_cfg):
  """(name, CLIPVisionConfig) of the first CLIP preset whose tokens and width fit an image-conditioned DiT:
  `num_image_tokens` (257) tokens of width `image_dim`. A random I2V demo draws that tower."""
  from wanjax.errors import UsageError
  from wanjax.image.clip import PRESETS
  for name, cfg in PRESETS.items():
    if cfg.num_tokens == dit_cfg.num_image_tokens and cfg.width == dit_cfg.image_dim:
      return name, cfg
  raise UsageError(f"no CLIP preset gives {dit_cfg.num_image_tokens} tokens of width {dit_cfg.image_dim} for a "
                   f"random {dit_cfg.model_type} demo; valid DiT presets for random_init: tiny, tiny_i2v")
