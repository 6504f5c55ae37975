"""The Wan2.1 diffusion transformer (T2V, I2V, FLF2V; bidirectional and block-causal)."""
