"""DRaFT-style reward fine-tuning of a distilled generator with LoRA: gradients through the last K sampling steps
and the VAE decode of the first frame(s), into a pluggable differentiable reward.

Mirrors distill_wan2.1 `RL/scripts/train_wan_lora.py` (spec `post_training.md` A.8): LoRA (rank 128, alpha 64,
targets q/k/v/o of self/cross attention and ffn.0/ffn.2) on the distilled (guidance-embedded) DiT; each step
samples from noise with a few UniPC steps (3 at shift 15, normal multistep), steps before the last K under
stop-gradient (`backprop_strategy tail`); decodes the first latent frame(s) with gradient; clamps to [−1, 1];
reward r per sample; loss = mean |max_reward − r|; AdamW lr 1e-4, weight decay 0.01, eps 1e-10, cosine decay
over the run, no gradient clipping. The LoRA is exported with `wanjax.lora.save_lora` (LightX2V/ComfyUI keys)
after every checkpoint and at the end: `<workdir>/lora/step_<N>.safetensors` (the newest `keep_checkpoints` of
them are kept, as the training states are) and `<workdir>/lora/last.safetensors`.

Rewards (`c.reward_lora.reward`):
- "toy": the toy world's analytic differentiable reward (`wanjax.toyworld.reward`) from each prompt's scene spec.
- "clip": an HPSv2.1/CLIP-style adapter on user-supplied weights (never downloaded): a converted CLIP vision
  tower directory whose config uses every block (`num_used_layers == num_layers`), plus one safetensors file
  with `post_norm.scale`, `post_norm.bias` `[D]`, `proj` `[D, E]` and `text_features` `[P, E]` (one row per
  training prompt, in prompt order, from the reward model's text tower). r = ⟨n(proj(LN(cls))), n(text)⟩ averaged
  over the decoded frames, as HPSv2's `diag(image_feat · text_featᵀ)`.

Not copied: the reference's two-pass CFG `cond + w·(cond − uncond)` (A.8 [quirk]); without a guidance
embedding this uses standard CFG `uncond + w·(cond − uncond)`.
"""

import dataclasses
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from train import data, loop
from train import post_training as pt
from train import state as st
from train.distill import prompt_contexts
from train.models import build_dit
from wanjax import checkpoint, lora_train, schedules
from wanjax.errors import UsageError
from wanjax.solvers import get_solver

REWARDS = ("toy", "clip")


# ------------------------------------------------------------------------------------------------ sampling

def rollout(denoise, params, noise, *, sigmas, timesteps, solver, grad_steps, key):
  """Samples from `noise` with `solver` over the grid; only the last `grad_steps` steps are differentiated.

  Steps i < N − K run on stop-gradient params, and their output (latent and solver state) is stop-gradient, so
  the gradient w.r.t. `params` comes only from the last K model calls (the reference runs the others under
  `no_grad`). denoise(params, x [B,F,H,W,C], t [B]) -> v. Returns the final latent (float32)."""
  solver = get_solver(solver)
  n = len(timesteps)
  if not 1 <= grad_steps <= n:
    raise UsageError(f"backprop_steps={grad_steps} must be in [1, sample_steps={n}]")
  sig = jnp.asarray(sigmas, jnp.float32)
  frozen = jax.lax.stop_gradient(params)
  x = noise.astype(jnp.float32)
  state = solver.init_state(x)
  b = x.shape[0]
  for i in range(n):
    if i == n - grad_steps:
      x, state = jax.lax.stop_gradient((x, state))
    p = params if i >= n - grad_steps else frozen
    v = denoise(p, x, jnp.full((b,), float(timesteps[i]), jnp.float32))
    x, state = solver.step(state, x, v.astype(jnp.float32), i, sig, jax.random.fold_in(key, i))
  return x


# ------------------------------------------------------------------------------------------------ rewards

@dataclasses.dataclass(frozen=True, eq=False)
class ClipHead:
  """The static half of the CLIP-style reward (the tower's `ModelFn`); its arrays ride in the batch."""
  tower_fn: st.ModelFn

  def __call__(self, params, frames, inputs):
    """frames `[B, T', H, W, 3]` in [−1, 1] -> (reward [B], terms)."""
    from wanjax.image import clip
    tower = self.tower_fn.module(params["tower"])
    b, t = frames.shape[:2]
    pixels = clip.preprocess(frames.reshape((b * t,) + frames.shape[2:]), tower.cfg.image_size)
    cls = tower(pixels)[:, 0].astype(jnp.float32)
    mean = jnp.mean(cls, -1, keepdims=True)
    var = jnp.mean(jnp.square(cls - mean), -1, keepdims=True)
    h = (cls - mean) * jax.lax.rsqrt(var + tower.cfg.eps) * params["post_norm.scale"] + params["post_norm.bias"]
    img = h @ params["proj"]
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = inputs["text"] / jnp.linalg.norm(inputs["text"], axis=-1, keepdims=True)
    r = jnp.sum(img.reshape(b, t, -1) * txt[:, None], axis=-1).mean(axis=1)
    return r, {"clip": r}


def load_clip_reward(tower_dir, head_path, num_prompts):
  """(ClipHead, params, inputs {'text': [P, E]}) from user-supplied files (see the module docstring)."""
  from wanjax.image.load import load_clip
  tower = load_clip(tower_dir, policy="float32")
  if tower.cfg.num_used_layers != tower.cfg.num_layers:
    raise UsageError(f"{tower_dir}: the reward tower must use all {tower.cfg.num_layers} blocks (HPS reads the "
                     f"final CLS token); set num_used_layers={tower.cfg.num_layers} in its config.json")
  reader = checkpoint.SafetensorsReader([head_path])
  need = {"post_norm.scale": (tower.cfg.width,), "post_norm.bias": (tower.cfg.width,)}
  missing = sorted((set(need) | {"proj", "text_features"}) - set(reader.entries))
  if missing:
    raise UsageError(f"{head_path}: missing {missing}; needs post_norm.scale, post_norm.bias, proj, text_features")
  head = {k: np.asarray(reader.view(k), np.float32) for k in ("post_norm.scale", "post_norm.bias", "proj")}
  text = np.asarray(reader.view("text_features"), np.float32)
  bad = [k for k, s in need.items() if head[k].shape != s]
  if bad or head["proj"].shape[0] != tower.cfg.width or text.shape != (num_prompts, head["proj"].shape[1]):
    raise UsageError(f"{head_path}: shapes post_norm {head['post_norm.scale'].shape}, proj {head['proj'].shape}, "
                     f"text_features {text.shape}; expected [{tower.cfg.width}], [{tower.cfg.width}, E], "
                     f"[{num_prompts} prompts, E]")
  tower_fn, pure = st.ModelFn.from_module(tower)
  return ClipHead(tower_fn), {"tower": pure, **head}, {"text": text}


def toy_reward(params, frames, inputs):
  del params
  from wanjax.toyworld import reward as toy
  return toy.reward(frames, inputs)


def make_reward(r, prompts, total_frames):
  """(reward_fn(params, frames, inputs) -> (r [B], terms), reward params pytree, per-prompt inputs [P, ...])."""
  if r.reward == "toy":
    from wanjax.toyworld import reward as toy
    try:
      targets = toy.batch_targets(prompts, total_frames)
    except UsageError as e:
      raise UsageError(f"reward_lora.reward='toy' scores toy-world prompts only (reward=clip scores any): {e}"
                       ) from None
    return toy_reward, {}, targets
  if r.reward == "clip":
    if not r.clip_tower or not r.clip_head:
      raise UsageError("reward='clip' needs reward_lora.clip_tower (converted CLIP dir) and reward_lora.clip_head "
                       "(safetensors with post_norm, proj, text_features); weights are never downloaded")
    return load_clip_reward(r.clip_tower, r.clip_head, len(prompts))
  raise UsageError(f"reward_lora.reward={r.reward!r}; valid: {', '.join(REWARDS)}")


# ------------------------------------------------------------------------------------------------ step

def reward_step(state, batch, *, fn, vae_graphdef, reward_fn, tx, lr_fn, sigmas, timesteps, solver, grad_steps,
                decode_frames, latent_shape, scale, guidance, cfg_scale, max_reward, loss_scale, poison_steps):
  from wanjax.vae.model import decode_latent
  k_noise, k_roll = jax.random.split(pt.step_key(state, 13))
  ctx = batch["context"]
  b = ctx.shape[0]
  noise = jax.random.normal(k_noise, (b,) + latent_shape, jnp.float32)
  base = state.teacher

  def denoise(lora, x, t):
    params = lora_train.apply_lora(base, lora, scale)
    if guidance > 0:
      return fn.apply(params, x, t, ctx, guidance=pt.guidance_input(guidance, b))
    if cfg_scale == 1.0:
      return fn.apply(params, x, t, ctx)
    vv = fn.apply(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                  jnp.concatenate([ctx, jnp.broadcast_to(batch["negative"], ctx.shape)]))
    return vv[b:] + cfg_scale * (vv[:b] - vv[b:])

  def loss_fn(lora):
    x = rollout(denoise, lora, noise, sigmas=sigmas, timesteps=timesteps, solver=solver, grad_steps=grad_steps,
                key=k_roll)
    vae = nnx.merge(vae_graphdef, batch["vae"])
    frames = decode_latent(vae, x[:, :decode_frames])            # clamped to [-1, 1], as the reference
    r, terms = reward_fn(batch["reward_params"], frames, batch["reward"])
    loss = loss_scale * jnp.mean(jnp.abs(max_reward - r))
    return loop.poison(loss, state.step, poison_steps), (r, terms)

  (loss, (r, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.generator.params)
  metrics = {"loss/reward": loss, "reward/mean": jnp.mean(r), "lr/lora": lr_fn(schedule_count(state.generator.opt_state)),
             **{f"reward/{k}": jnp.mean(v) for k, v in terms.items()}}
  return pt.finish_update(state, loss, grads, tx, metrics)


# ------------------------------------------------------------------------------------------------ trainer

def schedule_count(opt_state):
  """The update count the optimiser's learning-rate schedule reads (its `ScaleByScheduleState`): it stays put on
  a step skipped as non-finite, where `state.step` moves on, so the logged rate is the one applied."""
  counts = [v for path, v in optax.tree_utils.tree_get_all_with_path(opt_state, "count")
            if any(getattr(k, "tuple_name", "") == "ScaleByScheduleState" for k in path)]
  if len(counts) != 1:
    raise AssertionError(f"expected one learning-rate schedule in the LoRA optimiser, found {len(counts)}")
  return counts[0]


def lora_schedule(t, total_steps, schedule):
  """step -> learning rate: cosine decay from `t.lr` to 0 over the run, or constant."""
  if t.lr <= 0:
    raise UsageError(f"learning rate {t.lr} must be > 0")
  if schedule not in ("cosine", "constant"):
    raise UsageError(f"reward_lora.lr_schedule={schedule!r}; valid: cosine, constant")
  if schedule == "cosine":
    return optax.cosine_decay_schedule(t.lr, max(int(total_steps), 1))
  return optax.constant_schedule(t.lr)


def lora_optimizer(t, total_steps, schedule):
  """AdamW (decoupled decay on the LoRA params) after optional clipping; cosine decay or constant LR."""
  lr = lora_schedule(t, total_steps, schedule)
  parts = [optax.clip_by_global_norm(t.clip)] if t.clip and t.clip > 0 else []
  parts.append(optax.adamw(lr, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay))
  return optax.chain(*parts)


def training_prompts(c, contexts):
  """Prompt texts paired with the contexts: the prompt file, or (smoke) random toy-world prompts from the seed."""
  if c.data.random_contexts > 0:
    from wanjax.toyworld import world
    rng = np.random.default_rng([c.seed, 0x7041])
    return [world.prompt_for(world.sample_spec(rng)) for _ in range(len(contexts))]
  return data.read_prompts(c.data.prompts)


def build_vae(c):
  from wanjax.vae.config import get_config
  from wanjax.vae.load import load_vae
  from wanjax.vae.model import create_vae
  if c.models.vae.weights:
    return load_vae(c.models.vae.weights)
  return create_vae(get_config(c.models.vae.preset), seed=c.seed + 7)


def check_settings(r):
  """The `reward_lora` section's own values, checked before any model, prompt or reward is built."""
  if int(r.sample_steps) < 1:
    raise UsageError(f"reward_lora.sample_steps={r.sample_steps} must be >= 1 (reference: 3)")
  if not 1 <= int(r.backprop_steps) <= int(r.sample_steps):
    raise UsageError(f"reward_lora.backprop_steps={r.backprop_steps} must be in [1, reward_lora.sample_steps="
                     f"{r.sample_steps}]")
  try:
    get_solver(r.solver)
  except (UsageError, ValueError, KeyError) as e:
    raise UsageError(f"reward_lora.solver: {e}") from None
  if r.reward not in REWARDS:
    raise UsageError(f"reward_lora.reward={r.reward!r}; valid: {', '.join(REWARDS)}")
  try:
    lora_train.scale_of(r.rank, r.alpha)
    lora_train.target_paths(tuple(r.targets))
  except UsageError as e:
    raise UsageError(f"reward_lora: {e}") from None


def train(c, workdir, mesh, rules):
  r = c.reward_lora
  check_settings(r)
  m = c.models.generator
  pt.check_guidance_embed(m.weights, "generator", m.guidance_embed,
                          f"reward_lora.guidance={r.guidance:g} samples through the guidance embedding: give a "
                          f"CFG-distilled generator (e.g. runs/half/export), or set "
                          f"models.generator.guidance_embed=False and reward_lora.guidance=0 (two-pass CFG at "
                          f"reward_lora.cfg_scale)" if m.guidance_embed else
                          "set models.generator.guidance_embed=True for it")
  gen = build_dit(m, seed=c.seed, mesh=mesh, rules=rules, role="generator")
  if r.guidance > 0 and not gen.cfg.guidance_embed:
    raise UsageError(f"reward_lora.guidance={r.guidance} needs a guidance-embedded generator (set "
                     f"models.generator.guidance_embed=True with CFG-distilled weights) or use guidance=0")
  sigmas, timesteps = schedules.unipc_sigmas(r.sample_steps, r.shift)
  if len(c.data.latent_shape) != 3:
    raise UsageError(f"data.latent_shape={tuple(c.data.latent_shape)}: give (F, H, W) of the sampled latent video "
                     f"(the rollouts start from noise), e.g. (21, 60, 104) for 81 frames at 480x832")
  latent_shape = tuple(int(x) for x in c.data.latent_shape) + (gen.cfg.out_dim,)
  pt.check_latent_shape(f"data.latent_shape={tuple(c.data.latent_shape)}", latent_shape, gen.cfg)
  if not 1 <= r.decode_latent_frames <= latent_shape[0]:
    raise UsageError(f"reward_lora.decode_latent_frames={r.decode_latent_frames} must be in [1, {latent_shape[0]}]")
  tx = lora_optimizer(c.generator, c.total_steps, r.lr_schedule)
  lr_fn = lora_schedule(c.generator, c.total_steps, r.lr_schedule)   # logged per step as lr/lora
  scale = lora_train.scale_of(r.rank, r.alpha)
  targets = tuple(r.targets)
  lora_train.target_paths(targets)   # validates the names at the edge

  def make_state(loaded):
    base = loaded if loaded is not None else gen.random_init()
    lora = lora_train.init_lora(jax.random.PRNGKey(c.seed + 3), base, rank=r.rank, targets=targets)
    return st.TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(c.seed),
                         generator=st.Trainee(params=lora, opt_state=tx.init(lora)),
                         teacher=jax.tree.map(jnp.copy, base))

  abstract_state = jax.eval_shape(make_state, gen.abstract if gen.weights else None)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  lora_shardings = jax.tree.map(lambda _: repl, abstract_state.generator.params)
  shardings = st.state_shardings(abstract_state, mesh, generator=lora_shardings, teacher=gen.shardings,
                                 tx_generator=tx)

  def create():
    return jax.jit(make_state, out_shardings=shardings)(gen.load(mesh, rules))

  contexts, negative = prompt_contexts(c, workdir, gen.cfg)
  prompts = training_prompts(c, contexts)
  total_frames = 1 + 4 * (latent_shape[0] - 1)
  reward_fn, reward_params, inputs = make_reward(r, prompts, total_frames)
  vae = build_vae(c)
  vae_graphdef, vae_state = nnx.split(vae)
  put = lambda tree: jax.device_put(tree, repl)  # noqa: E731
  fixed = {"vae": put(vae_state), "reward_params": put(reward_params), "negative": put(negative)}

  def batch_for(step):
    idx = data.batch_indices(c.seed, step, c.data.batch_size, len(contexts))
    ctx = np.asarray(contexts[idx], np.float32)
    return {"context": jax.device_put(ctx, pt.batch_sharding(mesh, rules, ctx.shape, pt._TEXT_AXES)),
            "reward": put({k: np.asarray(v[idx]) for k, v in inputs.items()}), **fixed}

  step = jax.jit(functools.partial(
      reward_step, fn=gen.fn, vae_graphdef=vae_graphdef, reward_fn=reward_fn, tx=tx, lr_fn=lr_fn,
      sigmas=tuple(map(float, sigmas)), timesteps=tuple(map(float, timesteps)), solver=r.solver,
      grad_steps=int(r.backprop_steps), decode_frames=int(r.decode_latent_frames), latent_shape=latent_shape,
      scale=scale, guidance=float(r.guidance), cfg_scale=float(r.cfg_scale), max_reward=float(r.max_reward),
      loss_scale=float(r.loss_scale), poison_steps=tuple(c.debug.nonfinite_steps)),
      donate_argnums=0, out_shardings=(shardings, None))
  out_dir = os.path.join(workdir, "lora")

  def export(step_done, state, name=None):
    path = os.path.join(out_dir, name or f"step_{step_done}.safetensors")
    lora_train.save(path, state.generator.params, alpha=r.alpha,
                    metadata={"rank": r.rank, "alpha": r.alpha, "targets": ",".join(targets), "step": step_done})
    logging.info("exported the LoRA to %s", path)
    if name is None and c.keep_checkpoints:
      prune_step_files(out_dir, keep=int(c.keep_checkpoints))

  state = pt.run(c, workdir, abstract_state=abstract_state, shardings=shardings, create=create,
                 step_fn_for=lambda _: step, batch_for=batch_for, mesh=mesh, rules=rules,
                 lrs=(), on_save=export)
  export(int(jax.device_get(state.step)), state, "last.safetensors")
  return state


def prune_step_files(out_dir, *, keep):
  """Keeps the newest `keep` `step_<N>.safetensors` LoRA exports (as the checkpoint manager keeps the newest
  `keep_checkpoints` training states); `last.safetensors` and other files are left alone."""
  steps = []
  for name in os.listdir(out_dir):
    m = re.fullmatch(r"step_(\d+)\.safetensors", name)
    if m:
      steps.append((int(m.group(1)), name))
  for _, name in sorted(steps)[:-keep]:
    os.remove(os.path.join(out_dir, name))
