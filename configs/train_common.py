"""Shared pieces of the training configs (`configs/train/*.py`): arg parsing, defaults, trainees, smoke mode.

Configs are built as big_vision does (`configs/common.py`, `parse_arg`): a variant is an argument string such as
`configs/train/dmd_bidirectional.py:model=t2v_14b,smoke=True` parsed against typed defaults; unknown keys raise.
Sections of every training config, in order: models, objective, optimisers, cadence, data, mesh.
"""

import ml_collections

from configs.common import parse_arg  # noqa: F401  (re-exported for the training configs)


def model(preset, *, weights="", precision="bf16", remat="full", scan=True, attn_impl="auto",
          guidance_embed=False, weights_from=""):
  """A DiT to build: preset name, converted weights dir ('' = random init from the seed), and the constructor
  keywords (precision policy, remat policy, scan, attention impl); `guidance_embed` adds the guidance
  embedding of CFG-distilled students to the preset (post_training.md A.2). `weights_from`: another role whose
  weights this one takes when its own `weights` is empty (DMD: teacher and critic from the generator)."""
  return ml_collections.ConfigDict(dict(preset=preset, weights=weights, precision=precision, remat=remat,
                                        scan=scan, attn_impl=attn_impl, guidance_embed=guidance_embed,
                                        weights_from=weights_from))


def trainee(*, lr, b1=0.0, b2=0.999, eps=1e-8, weight_decay=0.01, clip=10.0, ema_decay=0.0, ema_start=0):
  """Optimiser settings of one trained network (AdamW after global-norm clipping, constant LR).
  ema_decay=0 disables the EMA."""
  return ml_collections.ConfigDict(dict(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, clip=clip,
                                        ema_decay=ema_decay, ema_start=ema_start))


def dmd_objective(**overrides):
  """The DMD objective section with the Self-Forcing reference defaults (SF:configs/self_forcing_dmd.yaml over
  default_config.yaml; spec distillation.md §1.2); configs pass only what differs. Unknown keys raise."""
  c = ml_collections.ConfigDict(dict(
      timesteps=(1000, 750, 500, 250), warp=True, shift=5.0,   # generator list and its grid shift
      score_shift=5.0, min_t=20.0, max_t=980.0,                # score-timestep warp and clamp
      teacher_grid_shift=8.0,        # teacher/critic wrappers' own grid (SF default timestep_shift 8)
      grid_lookup="reference",       # Quirk: §0.3 nearest-grid sigma; "exact" uses sigma = t/1000
      guidance_scale=3.0, cfg_form="sf",                        # SF form (standard CFG = this + 1)
      critic_steps_per_generator_step=5, last_step_only=False,
      # The frozen teacher's storage: "bf16_kernels" its bf16 matmuls' kernels in bf16 (same outputs; -2.6 GiB at
      # 1.3B, -26 at 14B), "bfloat16" every param (-2.6 / -28 GiB; float32-path weights rounded), "float32".
      teacher_param_dtype="bf16_kernels"))
  unknown = sorted(set(overrides) - set(c.keys()))
  if unknown:
    raise ValueError(f"unknown DMD option(s) {unknown}; valid: {', '.join(sorted(c.keys()))}")
  c.update(overrides)
  return c


def train_defaults(arg):
  """Seed, cadence, data, mesh and debug defaults shared by every trainer."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Cadence.
  c.total_steps = 600
  c.checkpoint_every = 50
  c.keep_checkpoints = 3
  c.log_every = 10
  c.max_consecutive_nonfinite = 5
  c.async_checkpoints = True
  c.max_train_seconds = 0.0     # > 0: wall-clock budget; stops and saves at the first step past it
  # Data.
  c.data = ml_collections.ConfigDict(dict(
      prompts="",               # a .txt file (one prompt per line) or a folder of .txt files (one prompt each)
      negative_prompt="",       # '' = Wan's default negative prompt
      text_encoder="",          # converted umT5 dir; '' with smoke = random fixed contexts from the seed
      tokenizer="",
      prompt_cache="",          # '' = <workdir>/prompt_cache
      batch_size=1,             # global batch
      latent_shape=(21, 60, 104),   # F, H, W of the latent video (81 frames at 480x832)
      random_contexts=0,        # > 0: use this many random fixed contexts (smoke/tests) instead of prompts
  ))
  c.mesh = "fsdp=-1"
  c.sharding_overrides = ""
  # Debug: steps whose loss is poisoned with NaN (tests the non-finite policy); a host sleep per step.
  c.debug = ml_collections.ConfigDict(dict(nonfinite_steps=(-1,), sleep_per_step=0.0))
  del arg
  return c


def toyworld(c, smoke, *, batch_size, smoke_batch_size=2, roles=("generator", "teacher", "critic")):
  """The toy world's shared training settings (docs/toyworld.md): fp32 and no remat for the DiT `roles` present
  (1.25 M parameters), 5×8×8 latents (64×64×17), one data-parallel mesh. With `smoke`: 6 steps (checkpoints
  at 3 and 6, synchronous), `smoke_batch_size` at 2×4×4 latents. Call it after the config's own settings."""
  for role in roles:
    if role in c.models:
      c.models[role].precision, c.models[role].remat = "float32", "none"
  c.data.batch_size = batch_size
  c.data.latent_shape = (5, 8, 8)
  c.mesh = "data=-1"
  if smoke:
    c.total_steps, c.checkpoint_every, c.log_every, c.keep_checkpoints = 6, 3, 1, 2
    c.async_checkpoints = False
    c.data.batch_size = smoke_batch_size
    c.data.latent_shape = (2, 4, 4)
  return c


def maybe_smoke(c, smoke):
  """Shrinks a config to tiny random models, a few steps on CPU (< 2 minutes); tests run exactly this."""
  if not smoke:
    return c
  for name in ("generator", "critic", "teacher"):
    if name in c.models:
      m = c.models[name]
      m.preset, m.weights, m.precision, m.remat = "tiny", "", "float32", "none"
  c.total_steps = 12
  c.checkpoint_every = 4
  c.keep_checkpoints = 2
  c.log_every = 2
  c.async_checkpoints = False
  c.data.batch_size = 2
  c.data.latent_shape = (3, 4, 6)
  c.data.random_contexts = 4
  c.mesh = "fsdp=-1"   # every device there is: a plain CPU has one (the tests fake 8)
  return c
