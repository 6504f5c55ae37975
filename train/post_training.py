"""Post-training recipes of distill_wan2.1: shared maths, data, model export and the dispatch of the trainers.

Mirrors the pieces the reference scripts share (spec `post_training.md` A.3–A.4, A.8): the pseudo-Huber loss
(c = 0.001), the per-step guidance draw broadcast to the whole batch, rectified-flow noising
`x_σ = (1 − σ)·x0 + σ·ε`, and the first-order step that the reference obtains by resetting UniPC's multistep
state before every call, written here explicitly as the Euler/DDIM step in x0 form (A.11).

The three trainers live in `train/cfg_distill.py`, `train/step_distill.py` and `train/reward.py`; all run the
shared loop (`train/loop.py`) through `run` below and are reached from the distillation CLI by `c.objective`:

  python -m train.distill --config configs/train/cfg_distill.py:smoke=True --workdir /tmp/cfgd
  python -m train.distill --config configs/train/step_distill.py:smoke=True --workdir /tmp/stepd
  python -m train.distill --config configs/train/reward_lora.py:smoke=True --workdir /tmp/rl
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from train import data, export, loop
from train import state as st
from wanjax import sharding as shd
from wanjax.errors import UsageError

OBJECTIVES = ("cfg_distill", "step_distill", "reward_lora")
HUBER_C = 1e-3          # the reference's pseudo-Huber constant (A.3, A.4)
_LATENT_AXES = ("batch", "frames", "height", "width", "channels")
_TEXT_AXES = ("batch", "text_length", "act_embed")


# ------------------------------------------------------------------------------------------------ maths

def pseudo_huber(pred, target, c=HUBER_C):
  """`mean(sqrt((pred − target)² + c²) − c)` in float32 (reference `huber_loss`), evaluated as the equal
  `d² / (sqrt(d² + c²) + c)`, which does not cancel when |d| << c."""
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  d2 = d * d
  return jnp.mean(d2 / (jnp.sqrt(d2 + c * c) + c))


def bcast(s, x):
  """Per-sample `[B]` values broadcast against `x [B, ...]`."""
  s = jnp.asarray(s, jnp.float32)
  return s.reshape(s.shape + (1,) * (x.ndim - s.ndim))


def add_noise(x0, eps, sigma):
  """x_σ = (1 − σ)·x0 + σ·ε; sigma `[B]`."""
  s = bcast(sigma, x0)
  return (1 - s) * x0.astype(jnp.float32) + s * eps.astype(jnp.float32)


def x0_from_v(x, v, sigma):
  """x̂0 = x − σ·v (flow prediction v = ε − x0)."""
  return x.astype(jnp.float32) - bcast(sigma, x) * v.astype(jnp.float32)


def euler_step(x, x0, sigma, sigma_next):
  """First-order Euler/DDIM step in x0 form: x_next = (σ'/σ)·x + (1 − σ'/σ)·x̂0.

  This is what UniPC computes when its multistep state is reset before every call (A.4), and equals the
  velocity form x + (σ' − σ)·v. sigma, sigma_next `[B]`, sigma > 0.
  """
  r = bcast(sigma_next, x) / bcast(sigma, x)
  return r * x.astype(jnp.float32) + (1 - r) * x0.astype(jnp.float32)


def sample_guidance(key, lo, hi):
  """One guidance scale per step, a uniform integer in [lo, hi] (`random.randint(lo, hi)`), float32 scalar."""
  return jax.random.randint(key, (), int(lo), int(hi) + 1).astype(jnp.float32)


def guidance_input(w, batch):
  """The DiT's `guidance` argument: w·1000 on the timestep scale, float32 `[B]`. Not the reference's bf16
  tensor, which rounds 3 -> 3008, 5 -> 4992 (A.2; "things not to copy")."""
  return jnp.full((batch,), jnp.asarray(w, jnp.float32) * 1000.0, jnp.float32)


def step_key(state, salt):
  return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), salt)


def finish_update(state, loss, grads, tx, metrics, *, ema_decay=0.0):
  """Applies the generator's update unless it is non-finite (loss, gradient or updated params; params and
  optimiser state stay; `st.guarded_update`), then the EMA (`ema_decay` > 0) on a kept one; advances the step,
  adds the common metrics."""
  def ema(new, old):
    return new.replace(ema=st.ema_update(new.ema, new.params, ema_decay))

  new, ok, gnorm = st.guarded_update(state.generator, loss, grads, tx, ema if ema_decay > 0 else None)
  state = state.replace(generator=new, step=state.step + 1)
  return state, dict(metrics, **{"grad_norm/generator": gnorm, "finite": ok})


# ------------------------------------------------------------------------------------------------ models

def guided(mcfg, guidance_embed):
  """A copy of a `train_common.model` ConfigDict asking for (or not) the guidance embedding."""
  m = mcfg.copy_and_resolve_references()
  with m.unlocked():
    m.guidance_embed = bool(guidance_embed)
  return m


def check_guidance_embed(weights, role, want, hint):
  """One clear line when the model dir `weights` of `models.<role>` has (or lacks) the guidance embedding the
  recipe needs, before `build_dit` compares whole configs. A missing dir or config is left to `build_dit`."""
  if not weights or not os.path.isfile(os.path.join(weights, "config.json")):
    return
  from wanjax.dit.load import read_config
  has = read_config(weights)[0].guidance_embed
  if has != bool(want):
    raise UsageError(f"models.{role}.weights={weights} {'is' if has else 'is not'} a CFG-distilled model (it has "
                     f"{'a' if has else 'no'} guidance embedding); {hint}")


def export_dit(out_dir, cfg, params, *, extra=None):
  """Writes DiT `params` (pure dict, stacked blocks) as a model directory that `load_dit`, `infer.sample
  --config.weights` and the trainers' `weights` read, with the writer of `python -m train.export` (the same
  files for the same step): per-layer `blocks.{i}.x` keys, `config.json` = DiTConfig + family, replacing an
  earlier export in `out_dir` crash-safely."""
  return export.write_dit(out_dir, cfg, jax.device_get(params), extra=extra)   # logs what it wrote


# ------------------------------------------------------------------------------------------------ data

def batch_sharding(mesh, rules, shape, axes):
  return jax.sharding.NamedSharding(mesh, shd.spec_for(axes, shape, mesh, rules))


def latent_source(c, cfg):
  """(shards or None, sample shape `(F, H, W, C)`) of the clean latents, checked before any prompt is encoded.

  With `data.latents` the shape is the data's: `data.latent_shape=()` (the configs' default) takes it as it is,
  an explicit `(F, H, W)` must equal it. Without `data.latents` only smoke runs (`data.random_contexts > 0`)
  train, on random latents of `data.latent_shape`. The shape is checked against the DiT (channels, patch)."""
  want = tuple(int(x) for x in c.data.latent_shape)
  if want and len(want) != 3:
    raise UsageError(f"data.latent_shape={want}: give (F, H, W) of the latent video, or () to read it from "
                     f"data.latents")
  path = c.data.get("latents", "")
  if path:
    lat = data.LatentShards(path, rank=jax.process_index(), num_ranks=jax.process_count())
    shape = tuple(int(x) for x in lat.sample_shape)
    if want and shape[:3] != want:
      raise UsageError(f"{path}: latents have shape {shape} but data.latent_shape={want}; set "
                       f"--config.data.latent_shape=() to train on the data's shape {shape[:3]}")
  elif c.data.random_contexts > 0:
    if not want:
      raise UsageError("data.latent_shape=() reads the shape from data.latents, which is empty; give "
                       "config.data.latents or (smoke) an explicit data.latent_shape=(F, H, W)")
    lat, shape = None, want + (cfg.out_dim,)
  else:
    raise UsageError("config.data.latents is empty: give clean latent shards or a train.preprocess feature folder "
                     "(paired by index with config.data.prompts); only smoke runs (data.random_contexts > 0) "
                     "train on random latents")
  check_latent_shape(path or "data.latent_shape", shape, cfg)
  return lat, shape


def check_latent_shape(where, shape, cfg):
  """Clean latents `[F, H, W, C]` for the DiT: C = out_dim (the VAE's z channels; an I2V DiT's in_dim adds its
  condition channels to them), F, H, W divisible by its patch (one line naming `where`)."""
  shape = tuple(shape)
  if len(shape) != 4 or shape[-1] != cfg.out_dim or any(s % p for s, p in zip(shape[:3], cfg.patch_size)):
    raise UsageError(f"{where}: latents of shape {shape}; the DiT denoises [F, H, W, {cfg.out_dim}] with F, H, W "
                     f"divisible by its patch {tuple(cfg.patch_size)}")


def latent_getter(c, source, num_prompts):
  """get(indices) -> clean latents `[B, F, H, W, C]` float32: the shards of `latent_source` paired by index
  with the prompts, or random fixed latents from the seed (smoke)."""
  lat, shape = source
  if lat is not None:
    if len(lat) != num_prompts:
      raise UsageError(f"{c.data.latents}: {len(lat)} latents but {num_prompts} prompts; they pair by index")
    return lat.get
  fake = np.random.default_rng([c.seed, 0x9057]).standard_normal((num_prompts,) + shape).astype(np.float32)
  return lambda idx: fake[idx]


def latent_contexts(c, workdir, cfg):
  """(contexts `[n]`-indexable -> `[B, S, D]`, negative `[S, D]`) paired by index with the latents: the prompts of
  `data.prompts` encoded once (cached in the workdir), or, when `data.latents` is a `train.preprocess` feature
  folder and `data.prompts` is empty, the folder's own cached contexts and negative-prompt embedding (as the
  teacher's trainer reads them; no text encoder needed)."""
  from train.distill import prompt_contexts
  path = c.data.get("latents", "")
  if c.data.random_contexts <= 0 and path and not c.data.prompts and os.path.isfile(
      os.path.join(path, "index.json")):
    if c.data.negative_prompt:
      raise UsageError(f"data.negative_prompt is set, but the contexts come from the feature folder {path} (with "
                       f"the negative prompt it was preprocessed with); give data.prompts={path} and "
                       f"data.text_encoder/tokenizer to encode them again")
    from train.flow_matching import feature_contexts
    return feature_contexts(path, cfg, "negative")
  return prompt_contexts(c, workdir, cfg)


def latent_batches(c, mesh, rules, contexts, negative, get_latents):
  """batch_for(step) -> {'latents', 'context', 'negative'} on device; deterministic in (seed, step)."""
  neg = jax.device_put(negative, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

  def batch_for(step):
    idx = data.batch_indices(c.seed, step, c.data.batch_size, len(contexts))
    x, ctx = get_latents(idx), np.asarray(contexts[idx], np.float32)
    return {"latents": jax.device_put(x, batch_sharding(mesh, rules, x.shape, _LATENT_AXES)),
            "context": jax.device_put(ctx, batch_sharding(mesh, rules, ctx.shape, _TEXT_AXES)),
            "negative": neg}

  return batch_for


# ------------------------------------------------------------------------------------------------ driver

def run(c, workdir, *, abstract_state, shardings, create, step_fn_for, batch_for, mesh, rules, lrs,
        on_save=None):
  """Restores or creates the state and runs the shared loop (`loop.train`, which also reports config changes
  since the checkpoint); `on_save(step, state)` runs after each checkpoint."""
  return loop.train(c, workdir, abstract_state=abstract_state, shardings=shardings, create=create,
                    step_fn_for=step_fn_for, batch_for=batch_for, mesh=mesh, rules=rules, lrs=lrs,
                    on_save=on_save, what="trained params")


def train(c, workdir, mesh, rules):
  """Runs the post-training objective named by `c.objective`; returns the final TrainState."""
  if c.objective == "cfg_distill":
    from train import cfg_distill
    return cfg_distill.train(c, workdir, mesh, rules)
  if c.objective == "step_distill":
    from train import step_distill
    return step_distill.train(c, workdir, mesh, rules)
  if c.objective == "reward_lora":
    from train import reward
    return reward.train(c, workdir, mesh, rules)
  raise UsageError(f"objective={c.objective!r}; valid: {', '.join(OBJECTIVES)}")
