"""Distillation CLI: DMD2 (bidirectional, Self-Forcing-Plus style) and ODE-init regression.

Mirrors Self-Forcing `trainer/distillation.py` (DMD, spec `distillation.md` §1.3: the counter counts critic
updates; a generator update runs first when s % ratio == 0, each with its own rollout, prompts and noise) and
`trainer/ode.py` (§2.2). The loop (checkpoints, resume, non-finite policy, logging) is `train/loop.py`.
The generator's rollout follows `config.rollout` (`train/causal.py`): bidirectional (default), causal
(Self-Forcing, KV-cache backward simulation) or noised_data (CausVid, data latents).

  python -m train.distill --config configs/train/dmd_bidirectional.py:model=t2v_14b --workdir runs/dmd \
      --config.models.generator.weights=ckpt/t2v_14b --config.data.prompts=prompts/
  python -m train.distill --config configs/train/dmd_smoke.py --workdir /tmp/dmd_smoke
  python -m train.distill --config configs/train/self_forcing.py:smoke=True --workdir /tmp/sf
"""

import dataclasses
import functools
import os
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from train import causal, data, dmd, loop
from train import state as st
from train.models import build_dit
from wanjax import sharding as shd
from wanjax.errors import UsageError


ROLES = ("generator", "teacher", "critic")


# ------------------------------------------------------------------------------------------------ helpers

# How the frozen teacher's params are held: "bf16_kernels" (default) stores the kernels its bf16 matmuls read cast
# anyway in bf16 (bit-identical teacher outputs; float32 everything else); "bfloat16" every floating param (its
# float32-path weights rounded too); "float32" as loaded.
TEACHER_DTYPES = {"bf16_kernels": None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dmd_settings(d) -> dmd.DMDSettings:
  """Typed DMD settings from `config.dmd` (warping the step list when asked)."""
  steps = tuple(float(s) for s in d.timesteps if s != 0)   # a trailing 0 is dropped, as the reference does
  if d.warp:
    steps = dmd.warp_timesteps(steps, d.shift)
  return dmd.DMDSettings(
      timesteps=steps, gen_grid=dmd.SigmaGrid(d.shift, d.grid_lookup),
      score_grid=dmd.SigmaGrid(d.teacher_grid_shift, d.grid_lookup), score_shift=d.score_shift,
      min_t=d.min_t, max_t=d.max_t, guidance_scale=d.guidance_scale, cfg_form=d.cfg_form,
      last_step_only=d.last_step_only)


def optimizer(t):
  return st.make_optimizer(lr=t.lr, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay, clip=t.clip)


def prompt_contexts(c, workdir, cfg):
  """([n, S, D], [S, D]) float32 host arrays: cached prompt embeddings, or random fixed ones for smoke."""
  if c.data.random_contexts > 0:
    return data.random_contexts(c.seed, c.data.random_contexts, cfg.text_len, cfg.text_dim)
  # CausVid reads its prompts' embeddings with the data latents; only the negative prompt is encoded here.
  prompts = [] if causal.uses_data(c) else data.read_prompts(c.data.prompts)
  return data.encode_prompts(prompts, c.data.negative_prompt, text_encoder=c.data.text_encoder,
                             tokenizer=c.data.tokenizer, text_len=cfg.text_len,
                             cache_dir=c.data.prompt_cache or os.path.join(workdir, "prompt_cache"))


def batch_sharding(mesh, rules, shape, axes):
  return NamedSharding(mesh, shd.spec_for(axes, shape, mesh, rules))


def step_keys(state, role):
  """Independent keys of one update, from fold_in(rng, step) (bitwise resume): noise, exit, rollout, loss."""
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), role)
  return jax.random.split(key, 4)


# ------------------------------------------------------------------------------------------------ DMD

def dmd_step(state, batch, *, fns, settings, tx_g, tx_c, gcfg, ratio, latent_shape, poison_steps, rollout,
             with_generator, critic_rollout=None):
  """One counter step: optional generator update (DMD), then a critic update (flow matching on a fresh
  stop-gradient rollout). Non-finite updates are skipped (state unchanged except step). Rollouts start from
  noise, or from `batch["latents"]` / `batch["latents_critic"]` when the batch has data (CausVid)."""
  critic_rollout = critic_rollout or rollout
  gen_fn, teacher_fn, critic_fn = fns["generator"], fns["teacher"], fns["critic"]
  metrics, finite = {}, jnp.bool_(True)
  neg = batch["negative"]
  n = len(settings.timesteps)

  if with_generator:
    ctx = batch["context"]
    b = ctx.shape[0]
    k_noise, k_exit, k_roll, k_loss = step_keys(state, 0)
    noise = jax.random.normal(k_noise, (b,) + latent_shape, jnp.float32)
    j = dmd.sample_exit_index(k_exit, n, last_step_only=settings.last_step_only)
    negs = jnp.broadcast_to(neg, ctx.shape)

    def teacher(x_t, t):  # cond and uncond as one batch of two
      v = teacher_fn.apply(state.teacher, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                           jnp.concatenate([ctx, negs]))
      return v[:b], v[b:]

    def critic(x_t, t):
      return critic_fn.apply(jax.lax.stop_gradient(state.critic.params), x_t, t, ctx)

    def loss_fn(params):
      x = rollout(causal.Denoiser(gen_fn, ctx), params, batch.get("latents", noise), k_roll, j)
      loss, m = dmd.generator_dmd_loss(x, k_loss, teacher=teacher, critic=critic, settings=settings)
      return loop.poison(loss, state.step, poison_steps), m

    old = state.generator
    (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(old.params)
    def ema(new, old_):
      return st.ema_step(new, old_.params, state.step, decay=gcfg.ema_decay, start=gcfg.ema_start, every=ratio)

    new, ok, gnorm = st.guarded_update(old, loss, grads, tx_g, ema if gcfg.ema_decay > 0 else None)
    state = state.replace(generator=new)
    finite = finite & ok
    metrics.update(m)
    metrics.update({"loss/generator": loss, "grad_norm/generator": gnorm, "rollout/exit_generator": j})

  # Critic update on a fresh prompt batch, its own noise and exit index.
  ctx = batch["context_critic"]
  b = ctx.shape[0]
  k_noise, k_exit, k_roll, k_loss = step_keys(state, 1)
  noise = jax.random.normal(k_noise, (b,) + latent_shape, jnp.float32)
  j = dmd.sample_exit_index(k_exit, n, last_step_only=settings.last_step_only)
  gen_params = jax.lax.stop_gradient(state.generator.params)
  x_gen = jax.lax.stop_gradient(critic_rollout(causal.Denoiser(gen_fn, ctx), gen_params,
                                               batch.get("latents_critic", noise), k_roll, j))

  def critic_loss(params):
    loss, m = dmd.critic_flow_loss(lambda x_t, t: critic_fn.apply(params, x_t, t, ctx), x_gen, k_loss, settings)
    return loop.poison(loss, state.step, poison_steps), m

  old = state.critic
  (loss, m), grads = jax.value_and_grad(critic_loss, has_aux=True)(old.params)
  new, ok, gnorm = st.guarded_update(old, loss, grads, tx_c)
  state = state.replace(critic=new, step=state.step + 1)
  metrics.update(m)
  metrics.update({"loss/critic": loss, "grad_norm/critic": gnorm, "rollout/exit_critic": j,
                  "finite": finite & ok})
  return state, metrics


@dataclasses.dataclass
class DMDSetup:
  """Everything a DMD run needs, built without running it (`train_dmd` runs it; `benchmarks/dmd_step.py` times
  it). `create()` builds the state born sharded (call it under `shd.activate`); `gen_step` / `critic_step` are
  the jitted counter steps `(state, batch) -> (state, metrics)` with the state donated; `batch_for(step)` is the
  device batch of a counter step."""
  built: dict                # role -> BuiltModel
  settings: dmd.DMDSettings
  ratio: int                 # critic updates per generator update
  abstract_state: st.TrainState
  shardings: st.TrainState
  create: Callable
  gen_step: Callable
  critic_step: Callable
  batch_for: Callable


def role_model(models, role):
  """`models[role]`, with the weights of `models[role].weights_from` when its own are empty (DMD2 / SF+: teacher
  and critic start from the generator's base model). The config itself is left as given."""
  m = models[role]
  source = m.get("weights_from", "")
  if m.weights or not source:
    return m
  if source not in models or source == role:
    raise UsageError(f"models.{role}.weights_from={source!r} names no other model; valid: "
                     f"{', '.join(r for r in models if r != role)}")
  if not models[source].weights:
    return m
  if models[source].preset != m.preset:
    raise UsageError(f"models.{role}.weights_from={source!r}, but models.{source} is {models[source].preset!r} and "
                     f"models.{role} is {m.preset!r}; set --config.models.{role}.weights")
  logging.info("models.%s.weights is empty: it starts from models.%s.weights (%s)", role, source,
               models[source].weights)
  m = m.copy_and_resolve_references()
  m.weights = models[source].weights
  return m


def build_dmd(c, workdir, mesh, rules) -> DMDSetup:
  """Models, state plumbing, batches and jitted steps of a DMD config (`workdir` only holds the prompt cache)."""
  built = {r: build_dit(role_model(c.models, r), seed=c.seed, mesh=mesh, rules=rules, role=r) for r in ROLES}
  settings = dmd_settings(c.dmd)
  tx_g, tx_c = optimizer(c.generator), optimizer(c.critic)
  ema = c.generator.ema_decay > 0
  ratio = int(c.dmd.critic_steps_per_generator_step)
  if ratio < 1:
    raise UsageError(f"dmd.critic_steps_per_generator_step={ratio} must be >= 1 (reference: 5)")
  gcfg = built["generator"].cfg
  if c.data.batch_size < 1:
    raise UsageError(f"data.batch_size={c.data.batch_size} must be >= 1")
  name = c.dmd.get("teacher_param_dtype", "bf16_kernels")
  if name not in TEACHER_DTYPES:
    raise UsageError(f"dmd.teacher_param_dtype={name!r}; valid: {', '.join(TEACHER_DTYPES)}")

  def frozen(params):   # the teacher is never updated: its floating params may be held in a narrower dtype
    if name == "bf16_kernels":
      return built["teacher"].frozen(params)
    dtype = TEACHER_DTYPES[name]
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype
                        else jnp.copy(x), params)

  def make_state(loaded):
    p = {r: loaded[r] if loaded[r] is not None else built[r].random_init() for r in ROLES}
    return st.TrainState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(c.seed),
        generator=st.init_trainee(p["generator"], tx_g, ema=ema),
        critic=st.init_trainee(p["critic"], tx_c), teacher=frozen(p["teacher"]))

  abstract_loaded = {r: built[r].abstract if built[r].weights else None for r in ROLES}
  abstract_state = jax.eval_shape(make_state, abstract_loaded)
  shardings = st.state_shardings(abstract_state, mesh, generator=built["generator"].shardings,
                                 critic=built["critic"].shardings, teacher=built["teacher"].shardings,
                                 tx_generator=tx_g, tx_critic=tx_c)

  def create():
    cache = {}
    loaded = {}
    for r in ROLES:
      w = built[r].weights
      if w and w not in cache:
        cache[w] = built[r].load(mesh, rules)
      loaded[r] = cache.get(w) if w else None
    return jax.jit(make_state, out_shardings=shardings)(loaded)

  contexts, negative = prompt_contexts(c, workdir, gcfg)
  bsz = c.data.batch_size
  latent_shape = tuple(c.data.latent_shape) + (gcfg.out_dim,)
  get_data = None
  if causal.uses_data(c):  # CausVid: clean latents paired with their prompts replace the prompt list
    contexts, get_data = data.data_latents(c.data.latents, contexts, latent_shape, seed=c.seed,
                                           rank=jax.process_index(), num_ranks=jax.process_count())
    lat_sharding = batch_sharding(mesh, rules, (bsz,) + latent_shape,
                                  ("batch", "frames", "height", "width", "channels"))
  ctx_sharding = batch_sharding(mesh, rules, (bsz,) + contexts.shape[1:], ("batch", "text_length", "act_embed"))
  neg_device = jax.device_put(negative, NamedSharding(mesh, jax.sharding.PartitionSpec()))

  # CausVid shares one batch between the generator and the critic update; SF draws fresh prompts (§9 item 7).
  critic_stream = 0 if c.data.get("same_batch_for_critic", False) else 1

  def batch_for(step):
    ig = data.batch_indices(c.seed, step, bsz, len(contexts), stream=0)
    ic = data.batch_indices(c.seed, step, bsz, len(contexts), stream=critic_stream)
    out = {"context": jax.device_put(contexts[ig], ctx_sharding),
           "context_critic": jax.device_put(contexts[ic], ctx_sharding), "negative": neg_device}
    if get_data is not None:
      out["latents"] = jax.device_put(get_data(ig), lat_sharding)
      out["latents_critic"] = jax.device_put(get_data(ic), lat_sharding)
    return out

  fns = {r: built[r].fn for r in ROLES}
  rollout, critic_rollout = causal.rollout_for(c, settings)
  common = dict(fns=fns, settings=settings, tx_g=tx_g, tx_c=tx_c, gcfg=c.generator, ratio=ratio,
                latent_shape=latent_shape, poison_steps=tuple(c.debug.nonfinite_steps), rollout=rollout,
                critic_rollout=critic_rollout)
  jit = functools.partial(jax.jit, donate_argnums=0, out_shardings=(shardings, None))
  gen_step = jit(functools.partial(dmd_step, with_generator=True, **common))
  critic_step = jit(functools.partial(dmd_step, with_generator=False, **common))
  return DMDSetup(built=built, settings=settings, ratio=ratio, abstract_state=abstract_state,
                  shardings=shardings, create=create, gen_step=gen_step, critic_step=critic_step,
                  batch_for=batch_for)


def train_dmd(c, workdir, mesh, rules):
  s = build_dmd(c, workdir, mesh, rules)

  def step_fn_for(step):
    return s.gen_step if dmd.is_generator_step(step, s.ratio) else s.critic_step

  return _run(c, workdir, s.abstract_state, s.shardings, s.create, step_fn_for, s.batch_for,
              lrs=(("generator", c.generator.lr), ("critic", c.critic.lr)), mesh=mesh, rules=rules)


# ------------------------------------------------------------------------------------------------ ODE init

def ode_step(state, batch, *, fn, tx, settings, frames_per_block, poison_steps):
  k = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 2)
  ctx, traj = batch["context"], batch["trajectory"]

  def loss_fn(params):
    denoise = lambda p, x, t: fn.apply(p, x, t, ctx, frames_per_block=frames_per_block)  # noqa: E731
    loss, m = dmd.ode_regression_loss(denoise, params, traj, k, timesteps=settings.timesteps + (0.0,),
                                      gen_grid=settings.gen_grid, frames_per_block=frames_per_block)
    return loop.poison(loss, state.step, poison_steps), m

  return st.guarded_generator_step(state, loss_fn, tx, "loss/ode")


def train_ode(c, workdir, mesh, rules):
  built = build_dit(c.models.generator, seed=c.seed, mesh=mesh, rules=rules, role="generator")
  settings = dmd_settings(c.dmd)
  tx = optimizer(c.generator)
  fpb = int(c.ode.frames_per_block) or None

  abstract_state, shardings, create = st.generator_only_state(built, tx, c.seed, mesh, rules)

  bsz = c.data.batch_size
  k = len(settings.timesteps) + 1
  if c.data.trajectories:
    trajs = data.LatentShards(c.data.trajectories, rank=jax.process_index(), num_ranks=jax.process_count())
    ctxs = data.LatentShards(c.data.trajectories, key="context", rank=jax.process_index(),
                             num_ranks=jax.process_count())
    if trajs.sample_shape[0] != k:
      raise UsageError(f"{c.data.trajectories}: trajectories hold {trajs.sample_shape[0]} latents per sample; "
                       f"the step list {settings.timesteps} + 0 needs {k}")
    get = lambda idx: (trajs.get(idx), ctxs.get(idx))  # noqa: E731
    n = len(trajs)
  else:  # smoke: random fixed trajectories and contexts from the seed
    contexts, _ = prompt_contexts(c, workdir, built.cfg)
    n = len(contexts)
    rng = np.random.default_rng([c.seed, 0x0DE])
    fake = rng.standard_normal((n, k) + tuple(c.data.latent_shape) + (built.cfg.out_dim,)).astype(np.float32)
    get = lambda idx: (fake[idx], contexts[idx])  # noqa: E731

  def batch_for(step):
    traj, ctx = get(data.batch_indices(c.seed, step, bsz, n))
    t_sh = batch_sharding(mesh, rules, traj.shape, ("batch", None, "frames", "height", "width", "channels"))
    c_sh = batch_sharding(mesh, rules, ctx.shape, ("batch", "text_length", "act_embed"))
    return {"trajectory": jax.device_put(traj, t_sh), "context": jax.device_put(ctx, c_sh)}

  step = jax.jit(functools.partial(ode_step, fn=built.fn, tx=tx, settings=settings, frames_per_block=fpb,
                                   poison_steps=tuple(c.debug.nonfinite_steps)),
                 donate_argnums=0, out_shardings=(shardings, None))
  return _run(c, workdir, abstract_state, shardings, create, lambda s: step, batch_for,
              lrs=(("generator", c.generator.lr),), mesh=mesh, rules=rules)


# ------------------------------------------------------------------------------------------------ driver

def _run(c, workdir, abstract_state, shardings, create, step_fn_for, batch_for, *, lrs, mesh, rules):
  return loop.train(c, workdir, abstract_state=abstract_state, shardings=shardings, create=create,
                    step_fn_for=step_fn_for, batch_for=batch_for, mesh=mesh, rules=rules, lrs=lrs)


def train(c, workdir):
  """Runs the trainer named by `c.objective` ('dmd' | 'ode_init'); returns the final TrainState."""
  mesh = shd.make_mesh(c.mesh)
  rules = shd.override_rules(c.sharding_overrides)
  if c.objective == "dmd":
    return train_dmd(c, workdir, mesh, rules)
  if c.objective == "ode_init":
    return train_ode(c, workdir, mesh, rules)
  from train import post_training  # CFG / step distillation, reward LoRA (post_training.md)
  if c.objective in post_training.OBJECTIVES:
    return post_training.train(c, workdir, mesh, rules)
  other = {"flow_matching": "train.flow_matching", "vae": "train.vae"}.get(c.objective)
  if other:
    raise UsageError(f"objective={c.objective!r} is trained by python -m {other}, not train.distill (same flags)")
  raise UsageError(f"objective={c.objective!r}; valid: dmd, ode_init, {', '.join(post_training.OBJECTIVES)}")


if __name__ == "__main__":
  loop.run_cli(train, "configs/train/dmd_smoke.py")
