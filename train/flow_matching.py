"""Plain flow-matching training / fine-tuning of the DiT on latents (e.g. the toy-world teacher).

Mirrors the reference flow-matching objective (spec `wan_model.md` sampling convention, `distillation.md` §0.2):
x_t = (1 - sigma) x0 + sigma eps with sigma = shift(u), u ~ U(0, 1), loss = mean((v - (eps - x0))^2). The
loop (checkpoints, resume, non-finite policy, logging) is `train/loop.py`; the data is a latent shard folder.

  python -m train.flow_matching --config configs/train/flow_matching.py --workdir runs/fm \
      --config.data.latents=latents/ --config.data.prompts=prompts.txt
  python -m train.flow_matching --config configs/train/flow_matching.py:smoke=True --workdir /tmp/fm
"""

import functools
import os

import jax
import numpy as np

from train import data, dmd, loop
from train import state as st
from train.distill import _run, batch_sharding, optimizer, prompt_contexts
from train.models import build_dit
from wanjax import sharding as shd
from wanjax.errors import UsageError



def fm_step(state, batch, *, fn, tx, shift, poison_steps):
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 3)

  def loss_fn(params):
    denoise = lambda p, x, t: fn.apply(p, x, t, batch["context"])  # noqa: E731
    loss, m = dmd.flow_matching_loss(denoise, params, batch["latents"], key, shift=shift)
    return loop.poison(loss, state.step, poison_steps), m

  return st.guarded_generator_step(state, loss_fn, tx, "loss/flow")


def _feature_folder(c) -> bool:
  return bool(c.data.latents) and not c.data.prompts and os.path.isfile(os.path.join(c.data.latents, "index.json"))


def feature_contexts(path, cfg, uncond="negative"):
  """(contexts `[n]`-indexable -> `[B, text_len, D]`, uncond `[text_len, D]`) of a feature folder, checked
  against the DiT's text_len and text_dim. uncond: 'negative' (the negative prompt) or 'empty' (umT5 of "")."""
  from train import features
  fs = features.FeatureSet(path, rank=jax.process_index(), num_ranks=jax.process_count(), text_len=cfg.text_len)
  neg = fs.uncond(uncond)
  if neg.shape[-1] != cfg.text_dim:
    raise UsageError(f"{path}: cached contexts have width {neg.shape[-1]} but the DiT reads text_dim="
                     f"{cfg.text_dim}; preprocess with the matching text encoder")
  return _FeatureContexts(fs), neg


class _FeatureContexts:
  """Cached contexts, zero-padded to text_len: `len()` and `[indices]` like a host array."""

  def __init__(self, fs):
    self.fs = fs

  def __len__(self):
    return len(self.fs)

  def __getitem__(self, idx):
    return np.stack([self.fs.tensor(int(i), "context") for i in idx])


def check_latent_shape(path, shape, cfg):
  """Latent samples must be `[F, H, W, in_dim]` with F, H, W divisible by the DiT's patch: checked before any
  compile, naming the data folder."""
  shape = tuple(shape)
  if (len(shape) != 4 or shape[-1] != cfg.in_dim
      or any(s % p for s, p in zip(shape[:3], cfg.patch_size))):
    raise UsageError(f"{path}: latents have shape {shape}; the DiT reads [F, H, W, {cfg.in_dim}] with F, H, W "
                     f"divisible by its patch {tuple(cfg.patch_size)}")


def train(c, workdir):
  objective = c.get("objective", "flow_matching")
  if objective != "flow_matching":
    other = "train.vae" if objective == "vae" else "train.distill"
    raise UsageError(f"objective={objective!r} is trained by python -m {other}, not train.flow_matching (same flags)")
  mesh = shd.make_mesh(c.mesh)
  rules = shd.override_rules(c.sharding_overrides)
  built = build_dit(c.models.generator, seed=c.seed, mesh=mesh, rules=rules)
  tx = optimizer(c.generator)

  abstract_state, shardings, create = st.generator_only_state(built, tx, c.seed, mesh, rules)

  # The latents first: a missing or empty folder is named as such (not as a missing prompt list).
  if c.data.latents:
    lat = data.LatentShards(c.data.latents, rank=jax.process_index(), num_ranks=jax.process_count())
    check_latent_shape(c.data.latents, lat.sample_shape, built.cfg)
  elif c.data.random_contexts <= 0:
    raise UsageError("config.data.latents is empty: give a train.preprocess feature folder (it carries the "
                     "contexts) or latent shards paired with config.data.prompts; only smoke runs "
                     "(data.random_contexts > 0) train on random latents")
  if _feature_folder(c):   # a train.preprocess folder carries each clip's context and the uncond ones
    contexts, negative = feature_contexts(c.data.latents, built.cfg, c.flow.get("uncond", "negative"))
  else:
    contexts, negative = prompt_contexts(c, workdir, built.cfg)
  dropout = float(c.flow.get("cfg_dropout", 0.0))
  if not 0.0 <= dropout < 1.0:
    raise UsageError(f"flow.cfg_dropout={dropout} must be in [0, 1) (e.g. 0.1: one context in ten unconditional)")
  if c.data.latents:
    if len(lat) != len(contexts):
      raise UsageError(f"{c.data.latents}: {len(lat)} latents but {len(contexts)} prompts; they pair by index")
    get = lat.get
  else:  # smoke: random fixed latents from the seed
    fake = np.random.default_rng([c.seed, 0xF10]).standard_normal(
        (len(contexts),) + tuple(c.data.latent_shape) + (built.cfg.in_dim,)).astype(np.float32)
    get = lambda idx: fake[idx]  # noqa: E731

  def batch_for(step):
    idx = data.batch_indices(c.seed, step, c.data.batch_size, len(contexts))
    x, ctx = get(idx), contexts[idx]
    if dropout:   # CFG training: a deterministic (seed, step) draw of rows whose text is dropped
      drop = np.random.default_rng([c.seed, step, 0xCF6]).random(len(idx)) < dropout
      ctx = np.where(drop[:, None, None], negative[None].astype(ctx.dtype), ctx)
    return {"latents": jax.device_put(x, batch_sharding(mesh, rules, x.shape, ("batch", "frames", "height",
                                                                                 "width", "channels"))),
            "context": jax.device_put(ctx, batch_sharding(mesh, rules, ctx.shape,
                                                          ("batch", "text_length", "act_embed")))}

  step = jax.jit(functools.partial(fm_step, fn=built.fn, tx=tx, shift=c.flow.shift,
                                   poison_steps=tuple(c.debug.nonfinite_steps)),
                 donate_argnums=0, out_shardings=(shardings, None))
  return _run(c, workdir, abstract_state, shardings, create, lambda s: step, batch_for,
              lrs=(("generator", c.generator.lr),), mesh=mesh, rules=rules)


if __name__ == "__main__":
  loop.run_cli(train, "configs/train/flow_matching.py:smoke=True")
