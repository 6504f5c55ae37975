"""Defaults shared by the preprocessing configs (`configs/data/*.py`, read by `python -m train.preprocess`).

Each config states only what differs. Spec `post_training.md` A.1: 81 frames at 16 fps, 480×832, umT5 text_len
512, bf16 storage (the reference saves bf16 `.pt` files).
"""

import ml_collections


def preprocess_defaults():
  c = ml_collections.ConfigDict()
  # Models (converted dirs or raw torch files, converted once via infer.models.resolve_model).
  c.model_type = "t2v"          # t2v | i2v (i2v also caches clip_fea and y)
  c.vae = ""                    # Wan2.1 VAE
  c.text_encoder = ""           # umT5-XXL
  c.tokenizer = ""              # folder with tokenizer.json ('' with random_encoders: the toy-world one)
  c.clip = ""                   # I2V: CLIP ViT-H/14 image encoder
  c.vae_dtype = "float32"       # the reference VAE runs in fp32 at inference (bf16 in its preprocessing)
  c.text_dtype = "bf16"
  c.clip_dtype = "bf16"
  c.random_encoders = False     # tests/smoke: tiny random encoders from `seed` (presets below)
  c.random_presets = ml_collections.ConfigDict(dict(vae="tiny", text="tiny", clip="tiny"))
  c.seed = 0
  # Clips.
  c.frames = 81                 # 4k+1 frames sampled at `fps` from the clip start
  c.fps = 16.0
  c.sizes = ("832*480",)        # W*H; one entry = fixed size, several = aspect buckets (nearest aspect wins)
  c.max_aspect_change = 0.25    # skip clips whose aspect is further than this (relative) from every bucket
  c.text_len = 512
  c.negative_prompt = ""        # '' = Wan's default (with the I2V prefix); cached once next to umT5("")
  # Storage.
  c.dtype = "bfloat16"          # float32 | bfloat16 | float16
  c.clips_per_shard = 64
  # Throughput.
  c.batch_size = 8              # clips per encoder call (global; sharded over the mesh's data/fsdp axes)
  c.mesh = "data=-1"
  c.num_workers = 4             # video-decoding threads
  # Debug: stop abruptly (as a crash would) after this many shards; tests of resume.
  c.debug_stop_after_shards = 0
  return c
