"""CausVid DMD: causal 1.3B generator without backward simulation, on noised data latents (spec distillation.md
§3.4, CV:configs/wan_causal_dmd.yaml).

The generator sees real latents (CausVid: the clean end of its ODE pairs, `ode_latent[:, -1]`) noised at a
per-block index of [1000, 757, 522, 0] (no warp, shift 8; t = 0 keeps the clean latent) and predicts x0 in one
parallel block-causal forward. DMD and critic losses as Self-Forcing with score shift 8, SF-form CFG 3.5
(standard 4.5), lr 2e-6 for both networks, betas (0.9, 0.999), ratio 5, no EMA; the generator and critic
updates of a step share one batch.

  python -m train.distill --config configs/train/causvid_dmd.py --workdir runs/causvid \
      --config.models.generator.weights=ckpt/causvid_ode --config.models.teacher.weights=ckpt/t2v_1_3b \
      --config.models.critic.weights=ckpt/t2v_1_3b --config.data.latents=ode_pairs/ \
      --config.data.text_encoder=ckpt/umt5 --config.data.tokenizer=ckpt/tokenizer
Smoke (tiny random models, random latents, CPU):
  python -m train.distill --config configs/train/causvid_dmd.py:smoke=True --workdir /tmp/causvid
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", smoke=False)
  c = common.train_defaults(arg)
  c.objective = "dmd"
  # Models: causal generator (ODE init), bidirectional teacher and critic (T2V-1.3B).
  c.models = ml_collections.ConfigDict()
  c.models.generator = common.model(arg.model)
  c.models.teacher = common.model(arg.model)
  c.models.critic = common.model(arg.model)
  # Objective (CV:causvid/dmd.py; shift 8 everywhere, unwarped list).
  c.dmd = common.dmd_objective(
      timesteps=(1000, 757, 522, 0), warp=False, shift=8.0, score_shift=8.0,  # Quirk: §0.3, 757 -> grid sigma 0.75676
      guidance_scale=3.5)                                # SF form; standard CFG 4.5
  c.rollout = ml_collections.ConfigDict(dict(kind="noised_data", frames_per_block=3))
  # Optimisers: one lr for both networks, standard betas, no EMA.
  c.generator = common.trainee(lr=2e-6, b1=0.9)
  c.critic = common.trainee(lr=2e-6, b1=0.9)
  # Cadence.
  c.total_steps = 3000
  c.checkpoint_every = 200
  # Data: latents + contexts (ODE-pair shards from train.make_ode_pairs, or a train.preprocess folder).
  c.data.latents = ""
  c.data.same_batch_for_critic = True
  c.data.latent_shape = (21, 60, 104)
  c = common.maybe_smoke(c, arg.smoke)
  if arg.smoke:
    c.data.latent_shape = (6, 4, 6)
    c.dmd.critic_steps_per_generator_step = 3
    c.total_steps = 6
  return c
