"""Weight converters: torch layouts (original Wan, diffusers, ComfyUI, LightX2V, HF) to JAX safetensors."""
