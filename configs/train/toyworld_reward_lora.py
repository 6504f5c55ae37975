"""Toy-world reward LoRA (DRaFT, post_training.md A.8) on the half2 student, with the toy world's differentiable
reward (`wanjax.toyworld.reward`: palette fidelity, object areas, centroid motion).

Each step samples the student's own inference path (25 UniPC steps at shift 5, guidance 4 through the guidance
embedding), backpropagates through the last 2 steps and the toy VAE decode of the first latent frame (the
reference's choice: fidelity and area terms; decoding 2 latent frames would add the motion term at ~4x the
step time), and raises the reward of the training captions. LoRA rank 16, alpha 8 (the reference's
alpha/rank = 0.5) on q/k/v/o and the ffn of every block.

  python -m train.distill --config configs/train/toyworld_reward_lora.py --workdir runs/toyworld_post/reward \
      --config.models.generator.weights=runs/toyworld_post/half2/export \
      --config.models.vae.weights=wanjax/toyworld/checkpoints/vae --config.data.prompts=runs/toyworld/data \
      --config.data.text_encoder=wanjax/toyworld/checkpoints/umt5 \
      --config.data.tokenizer=wanjax/toyworld/checkpoints/tokenizer
  python -m infer.sample --config configs/sample/toyworld.py:model=teacher \
      --config.weights=runs/toyworld_post/half2/export --config.guidance=4 --config.num_steps=25 \
      --config.lora=runs/toyworld_post/reward/lora/last.safetensors:1.0
Smoke: configs/train/toyworld_reward_lora.py:smoke=True (32×32×5, 3 sampling steps). Whole demo:
scripts/post_train_toyworld.py.
"""

from configs import train_common as common
from configs.train import reward_lora


def get_config(arg=None):
  arg = common.parse_arg(arg, smoke=False)
  c = reward_lora.get_config("model=toyworld,reward=toy")
  # Models: the half2 student (guidance embedded, fp32) and the toy VAE (weights set by the pipeline script;
  # the VAE's config comes with its weights).
  # Objective: the student's own sampler (25 UniPC steps, shift 5, guidance 4); gradients through the last 2
  # steps and the decode of the first latent frame.
  r = c.reward_lora
  r.rank, r.alpha = 16, 8.0
  r.sample_steps, r.shift, r.solver, r.backprop_steps = 25, 5.0, "unipc", 2
  r.guidance = 4.0
  r.decode_latent_frames = 1
  # Optimiser: the reference's AdamW (wd 0.01, eps 1e-10, cosine decay, no clipping) at 3x its lr 1e-4: a
  # 1.25 M-parameter base and a few hundred steps.
  c.generator = common.trainee(lr=3e-4, b1=0.9, eps=1e-10, weight_decay=0.01, clip=0.0)
  # Cadence: ~1.5 s/step at batch 4 on the shared 2-core CPU (measured 1.1 s with the dim-8 smoke VAE; the real
  # dim-16 VAE's one-frame decode + backward costs 0.78 s instead of 0.35 s; 2 decoded latent frames: 6.8 s)
  # -> ~5 minutes.
  c.total_steps = 200
  c.checkpoint_every = 50
  c.log_every = 10
  # Data: the caption folder (one .txt per clip) encoded with the toy umT5; 5×8×8 latents.
  common.toyworld(c, arg.smoke, batch_size=4, roles=("generator",))   # fp32, no remat, 5x8x8, smoke sizes
  if arg.smoke:
    c.total_steps, c.checkpoint_every = 4, 2
    r.sample_steps, r.backprop_steps = 3, 2
  return c
