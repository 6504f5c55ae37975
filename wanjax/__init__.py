"""wanjax: a JAX/Flax NNX port of the Wan2.1 video diffusion stack and its distillation methods."""

__version__ = "0.1.0"
