"""Self-Forcing causal T2V-1.3B (spec distillation.md §4.2, §0.4): blocks of 3 latent frames, steps
(1000, 750, 500, 250) warped at shift 5 → t = (1000, 937.5, 833.33, 625), fresh-noise re-noise, then a clean
t = 0 context pass per block (4 + 1 calls per block, 35 for 81 frames). CFG-free.

python -m infer.sample --config configs/sample/self_forcing.py --config.weights=/ckpt/self_forcing_dmd.pt \
  --config.text_encoder=/ckpt/umt5 --config.tokenizer=/ckpt/tokenizer --config.vae=/ckpt/vae \
  --config.prompt="A cat surfing a wave"          # CPU demo: configs/sample/self_forcing.py:runlocal
Longer than 81 frames: --config.frames=165 --config.ar.rolling=True --config.ar.sink_frames=3 (42 latent frames;
frames must be 1 + 4·(3k − 1)).
"""

import ml_collections

from configs import common


def ar_defaults(nfpb=3):
  """AR sampler options (wanjax.sampling_ar.AROptions minus the step list, which is `timesteps`/`shift`)."""
  return ml_collections.ConfigDict(dict(
      frames_per_block=nfpb,    # num_frame_per_block
      warp=True,                # warp_denoising_step: t = 1000·shift(s/1000)
      sigma_lookup="grid",      # Quirk §0.3: nearest 1000-point grid σ ('exact' = t/1000)
      context_pass=True,        # clean t = context_noise pass writes each finished block
      context_noise=0.0,
      cache_frames=21,          # KV buffer in latent frames (32760 tokens at 480×832)
      rolling=False,            # rolling window (SF local_attn_size = cache_frames) with a sink
      sink_frames=0,
      long_video="none",        # none | rollouts (CausVid) | fragments (LightX2V num_fragments)
      num_segments=1,
      overlap_frames=3,         # CausVid rollout overlap (latent frames)
      kv_buckets=1,             # attention lengths: >1 attends the shortest of that many cache prefixes (one
                                # program each; same video to float rounding, see AROptions.kv_buckets)
      cache_in_carry=True,      # the KV cache written in place inside the layer loop (False: per-layer slices)
  ))


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", nfpb=3, runlocal=False)
  c = common.sample_defaults(arg)
  c.model = arg.model
  c.size = "832*480"
  c.frames = 81                             # 21 latent frames = 7 blocks
  c.distilled = True
  c.sampler = "ar"                          # block-wise autoregressive (wanjax.sampling_ar)
  c.solver = "consistency"                  # update: consistency = fresh-noise re-noise | euler | unipc
  c.timesteps = (1000, 750, 500, 250)
  c.num_steps = 4
  c.shift = 5.0
  c.cfg_scale = 1.0
  c.ar = ar_defaults(arg.nfpb)
  c.renoise = ""                            # .npy [num_blocks, steps-1, 16, nfpb, H, W]: replaces re-noise draws
  c.stream = True                           # decode finished blocks and append them to the mp4 as they come
  return maybe_runlocal(c, arg.runlocal)


def maybe_runlocal(c, runlocal):
  """CPU demo: a random tiny DiT + VAE, 48×32, 6 latent frames."""
  if runlocal:
    c.model = "tiny"
    c.random_init = True
    c.dtype = "float32"
    c.prompt = c.prompt or "a tiny test video"
    c.size = "48*32"
    c.frames = 1 + 4 * (2 * c.ar.frames_per_block - 1)
    c.compilation_cache = ""
  return c
