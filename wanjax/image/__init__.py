"""Image side of I2V/FLF2V: torch-equal bicubic resize, the CLIP ViT-H/14 visual tower, conditioning tensors."""
