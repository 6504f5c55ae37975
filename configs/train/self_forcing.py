"""Self-Forcing DMD: causal 1.3B generator from an ODE-init checkpoint, bidirectional 14B teacher and 1.3B critic,
backward simulation through the KV cache (spec distillation.md §1, SF:configs/self_forcing_dmd.yaml).

Generator: block-causal (3 latent frames per block), warped 4-step list [1000, 937.5, 833.33, 625] at shift 5,
one exit step shared by all blocks, gradient only through each block's exit step, context pass with the
reference's grid-lookup noise (σ = 0.00498 at t = 0). SF-form CFG 3.0 (standard 4.0), 1 generator step per 5
critic steps, EMA 0.99 from step 200, 600 steps (120 generator updates). The ODE-init weights are SF's
`checkpoints/ode_init.pt` converted with `python -m converters.convert`, or an ode_init run (train.make_ode_pairs,
then configs/train/ode_init.py:... with ode.frames_per_block=3) exported with
`python -m train.export --config configs/train/ode_init.py --workdir runs/ode --out ckpt/sf_ode_init`.

  python -m train.distill --config configs/train/self_forcing.py --workdir runs/sf \
      --config.models.generator.weights=ckpt/sf_ode_init --config.models.teacher.weights=ckpt/t2v_14b \
      --config.models.critic.weights=ckpt/t2v_1_3b --config.data.prompts=prompts/vidprom_filtered_extended.txt \
      --config.data.text_encoder=ckpt/umt5 --config.data.tokenizer=ckpt/tokenizer
Smoke (tiny random models, 2 blocks of 3 frames, CPU):
  python -m train.distill --config configs/train/self_forcing.py:smoke=True --workdir /tmp/sf
"""

import ml_collections

from configs import train_common as common


def get_config(arg=None):
  arg = common.parse_arg(arg, model="t2v_1_3b", teacher="t2v_14b", smoke=False)
  c = common.train_defaults(arg)
  c.objective = "dmd"
  # Models: causal generator (ODE init), bidirectional teacher (real score) and critic (fake score).
  c.models = ml_collections.ConfigDict()
  c.models.generator = common.model(arg.model)
  c.models.teacher = common.model(arg.teacher)
  c.models.critic = common.model(arg.model)
  # Objective (SF:configs/self_forcing_dmd.yaml over default_config.yaml).
  c.dmd = common.dmd_objective(guidance_scale=3.0)   # SF form 3.0 (standard 4.0)
  c.rollout = ml_collections.ConfigDict(dict(
      kind="causal", frames_per_block=3,    # SF num_frame_per_block: 7 blocks of 3 latent frames
      context_noise=0.0,                    # t of the context pass (SF context_noise)
      # Quirk: §1.4 training adds noise at context_noise through the grid lookup ("reference"); inference
      # feeds clean x0 ("none").
      context_noise_mode="reference"))
  # Optimisers (AdamW betas (0, 0.999), wd 0.01, clip 10).
  c.generator = common.trainee(lr=2e-6, ema_decay=0.99, ema_start=200)
  c.critic = common.trainee(lr=4e-7)
  # Cadence: 600 critic steps, checkpoint every 50 (SF log_iters).
  c.total_steps = 600
  c.checkpoint_every = 50
  # Data: prompts only (data-free); 21 latent frames at 480x832.
  c.data.latent_shape = (21, 60, 104)
  c = common.maybe_smoke(c, arg.smoke)
  if arg.smoke:
    c.data.latent_shape = (6, 4, 6)     # two blocks, so the cache path between blocks is exercised
    c.dmd.critic_steps_per_generator_step = 3
    c.generator.ema_start = 3       # the generator step at 3 starts the EMA
    c.total_steps = 6
  return c
