"""DRaFT reward fine-tuning with LoRA (distill_wan2.1 `RL/scripts/train_wan_lora.py`, spec post_training.md A.8):
sample 3 UniPC steps (shift 15) from noise with the distilled generator + LoRA, backpropagate through the last K
steps and the VAE decode of the first latent frame into a differentiable reward; export the LoRA.

  python -m train.distill --config configs/train/reward_lora.py:model=toyworld --workdir runs/rl \
      --config.models.generator.weights=runs/half/export --config.models.vae.weights=ckpt/toy_vae \
      --config.data.prompts=prompts.txt --config.data.text_encoder=ckpt/umt5 --config.data.tokenizer=ckpt/tok
  python -m infer.sample ... --config.weights=runs/half/export --config.guidance=8 \
      --config.lora=runs/rl/lora/last.safetensors:0.5        # a smaller strength than trained (A.8 advice)
Smoke (tiny random models, toy reward, CPU, < 1 min):
  python -m train.distill --config configs/train/reward_lora.py:smoke=True --workdir /tmp/rl
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", reward="toy", smoke=False)
  c = common.train_defaults(arg)
  c.objective = "reward_lora"
  # Models: the distilled generator (frozen base, guidance embedded) and the VAE used for the decode.
  c.models = ml_collections.ConfigDict()
  c.models.generator = common.model(arg.model, guidance_embed=True)
  c.models.vae = ml_collections.ConfigDict(dict(weights="", preset="wan21"))   # weights '' = random (smoke)
  # Objective (A.8).
  c.reward_lora = ml_collections.ConfigDict(dict(
      rank=128, alpha=64.0, targets=("q", "k", "v", "o", "ffn"),
      sample_steps=3, shift=15.0, solver="unipc",      # normal multistep UniPC, as the reference
      backprop_steps=3,                                 # gradients through the last K sampling steps
      guidance=8.0,                                     # w of the guidance embedding; 0 = none (then cfg_scale)
      cfg_scale=1.0,                                    # two-pass CFG for models without the embedding
      decode_latent_frames=1,                           # decode (with grad) only the first latent frame(s)
      reward=arg.reward,                                # toy | clip
      clip_tower="", clip_head="",                      # clip: user-supplied tower dir + head/text file
      max_reward=1.0, loss_scale=1.0,                   # loss = loss_scale · mean |max_reward − r|
      lr_schedule="cosine",
  ))
  # Optimiser: AdamW lr 1e-4, weight decay 0.01, eps 1e-10, no gradient clipping.
  c.generator = common.trainee(lr=1e-4, b1=0.9, eps=1e-10, weight_decay=0.01, clip=0.0)
  # Cadence: the LoRA is exported beside every checkpoint (<workdir>/lora/step_N.safetensors) and at the end.
  c.total_steps = 10000
  c.checkpoint_every = 10
  # Data: prompts only (rollouts start from noise); (F, H, W) of the sampled latents: 81 frames at 480x832, or the
  # toy world's 17 frames at 64x64.
  c.data.latent_shape = (5, 8, 8) if arg.model == "toyworld" else (21, 60, 104)
  c = common.maybe_smoke(c, arg.smoke)
  if arg.smoke:
    c.total_steps, c.checkpoint_every = 3, 3
    c.models.vae.preset = "tiny"
    c.reward_lora.rank, c.reward_lora.alpha = 4, 2.0
    c.reward_lora.sample_steps, c.reward_lora.backprop_steps = 3, 2
    c.data.batch_size = 2
  return c
