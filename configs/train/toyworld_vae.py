"""Toy-world Wan VAE (docs/toyworld.md): 64×64×17 clips -> 5×8×8×16 latents, KL autoencoder, 2.58 M params.

  python -m train.vae --config configs/train/toyworld_vae.py --workdir runs/toyworld/vae \
      --config.data.clips=data/toyworld
  python -m train.export --config configs/train/toyworld_vae.py --workdir runs/toyworld/vae --out ckpt/vae
Smoke (a few steps, CPU): configs/train/toyworld_vae.py:smoke=True. The whole pipeline:
scripts/train_toyworld.py.
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  c = common.train_defaults(arg)
  c.objective = "vae"
  # Model: the Wan VAE architecture (4 stages, temporal ×4, spatial ×8) at width 16 instead of 96.
  c.vae = ml_collections.ConfigDict(dict(
      dim=16, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=1, temperal_downsample=(False, True, True),
      precision="float32"))
  # Objective: per-element means; the decoder sees mu, as at inference (sampling z = mu + sigma*eps left the
  # posterior sigma at ~1 and the reconstructions at ~16 dB PSNR after 400 steps: docs/toyworld.md). The KL term
  # then only keeps mu small; export normalises the latents to unit std anyway.
  # fg_weight: pixels off the clip's median colour weigh 1 + 10 (small objects are ~3 % of the pixels).
  c.loss = ml_collections.ConfigDict(dict(l1=1.0, l2=1.0, kl=1e-3, sample_latent=False, fg_weight=10.0))
  # Optimiser.
  c.generator = common.trainee(lr=5e-4, b1=0.9, b2=0.99, weight_decay=0.0, clip=1.0)
  # Cadence.
  c.total_steps = 3000
  c.checkpoint_every = 500
  c.log_every = 25
  # Data: a clip folder (python -m wanjax.toyworld.dataset), held in memory as uint8.
  c.data.clips = ""
  c.data.frames = 17
  c.data.size = 64
  c.data.max_clips = 0           # 0 = every clip of the folder
  c.data.train_frames = 0        # random 4k+1-frame windows (0 = whole clips); CPU budget runs use 5
  c.data.train_size = 0          # random square crops, multiple of 16 (0 = whole frames); CPU budget runs use 32
  c.data.batch_size = 8
  c.export_clips = 256           # clips whose latents fit the per-channel mean/std at export
  c.mesh = "data=-1"
  if arg.smoke:
    c.vae.dim = 8
    c.total_steps, c.checkpoint_every, c.log_every, c.keep_checkpoints = 6, 3, 1, 2
    c.async_checkpoints = False
    c.data.batch_size = 2
    c.data.frames = 5
    c.data.size = 32
    c.export_clips = 4
  return c
