"""Rollouts of a causal (block-wise) generator for DMD training: Self-Forcing and CausVid.

Mirrors Self-Forcing `pipeline/self_forcing_training.py` (`SelfForcingTrainingPipeline.inference_with_trajectory`,
spec `distillation.md` §1.4, §3.1: backward simulation through the KV cache with a random exit step shared by
all blocks, stochastic gradient truncation, context pass with the grid-lookup noise) and CausVid
`causvid/dmd.py` `_run_generator` with `backward_simulation: false` (§3.4: no rollout; noised data latents at a
per-block index of the step list, one parallel block-causal forward, §4.1).

Both have the signature of `train.dmd.bidirectional_rollout`, `(denoise, params, x, key, exit_index) -> x0`,
where `denoise` is a `Denoiser` (a generator bound to one prompt batch; it is also the plain
`denoise(params, x, t) -> v` callable the bidirectional rollout uses). `rollout_for(config, settings)` picks
the rollout a training config asks for.

Self-Forcing gradient truncation, and how it is computed here (§9.1, "precompute the caches"):
  1. no-gradient simulation of every block, in order: steps i < j re-noise with fresh noise, the exit step j
     gives x0_hat, the context pass writes the block's K/V into the static cache;
  2. with gradient, per block: the exit-step forward on the stop-gradient input x_j against the final cache
     (a constant). Block b writes its own K/V over slots [b·fpb, (b+1)·fpb) and attends to [0, (b+1)·fpb):
     the earlier blocks' slots hold exactly the context K/V it saw during the simulation (nothing overwrites
     them later), and its own K/V carry gradient, as in the reference's exit forward.
The exit forward therefore runs twice (once without gradient), which costs one generator forward per block
but keeps a single cache alive instead of one per block (a scan carrying the cache would save it as a
residual for every block: 7 × 6 GB for the 1.3B model at 81 frames).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from train import dmd
from train.state import ModelFn
from wanjax.dit import kv_cache
from wanjax.errors import UsageError

F32 = jnp.float32
ROLLOUTS = ("bidirectional", "causal", "noised_data")
CONTEXT_NOISE_MODES = ("reference", "none")


# ------------------------------------------------------------------------------------------------ denoiser

@dataclasses.dataclass(frozen=True)
class Denoiser:
  """A generator bound to the prompt batch `context` `[B, S, text_dim]`; the calls the rollouts make.

  Trace-time helper only (holds a ModelFn and traced arrays; never crosses a jit boundary).
  """
  fn: ModelFn
  context: jax.Array

  def __call__(self, params, x, t):
    """Bidirectional forward: x `[B, F, H, W, C]`, t `[B]` -> v float32."""
    return self.fn.apply(params, x, t, self.context)

  def parallel(self, params, x, t, frames_per_block):
    """Block-causal parallel forward (§4.1): t per frame `[B, F]`."""
    return self.fn.apply(params, x, t, self.context, frames_per_block=frames_per_block)

  def prompt_kv(self, params):
    """Cross-attention K/V of every layer for this prompt batch."""
    return kv_cache.prompt_kv(self.fn.module(params), self.context)

  def init_cache(self, params, batch, frames, height, width):
    """An empty static cache for `frames` latent frames of `height × width`."""
    module = self.fn.module(params)
    _, ph, pw = module.cfg.patch_size
    return kv_cache.cache_for(module, batch, frames, (height // ph) * (width // pw))

  def cached(self, params, cache, cross_kv, x, t, start_frame):
    """One block against the cache: (v float32, cache with the block's K/V written)."""
    return kv_cache.cached_forward(self.fn.module(params), cache, cross_kv, x, t, start_frame)


# ------------------------------------------------------------------------------------------------ noise

def renoise_draw(key, block, step, shape):
  """The fresh noise of block `block`'s re-noise after step `step` (float32 `shape`)."""
  return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, block), step), shape, F32)


def renoise_draws(key, num_blocks, num_steps, shape):
  """Every re-noise draw of a rollout, `[num_blocks, num_steps − 1, *shape]`: what `wanjax.sampling_ar`
  takes as `renoise` to reproduce a rollout at inference."""
  return jnp.stack([jnp.stack([renoise_draw(key, b, i, shape) for i in range(num_steps - 1)])
                    if num_steps > 1 else jnp.zeros((0,) + tuple(shape), F32) for b in range(num_blocks)])


def _context_key(key, block):
  # A stream apart from the re-noise draws (steps are < 2**16).
  return jax.random.fold_in(jax.random.fold_in(key, block), 1 << 16)


# ------------------------------------------------------------------------------------------------ Self-Forcing

def _blocks(x, fpb):
  """[B, F, H, W, C] -> [F/fpb, B, fpb, H, W, C]."""
  b, f = x.shape[:2]
  if f % fpb:
    raise UsageError(f"{f} latent frames are not a multiple of frames_per_block={fpb}")
  return jnp.moveaxis(x.reshape((b, f // fpb, fpb) + x.shape[2:]), 1, 0)


def _unblocks(x):
  """[F/fpb, B, fpb, H, W, C] -> [B, F, H, W, C]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def causal_rollout(denoise: Denoiser, params, noise, key, exit_index, *, timesteps, gen_grid: dmd.SigmaGrid,
                   frames_per_block, context_noise=0.0, context_noise_mode="reference", differentiable=True):
  """Self-Forcing backward simulation with the KV cache (§1.4). Returns x0_hat `[B, F, H, W, C]` float32.

  noise `[B, F, H, W, C]`; timesteps `[N]` as the network sees them (warped); exit_index: traced int32, a
  scalar shared by every block (SF `same_step_across_blocks`) or one per block `[F/fpb]`. Gradient flows only
  through each block's exit-step forward (w.r.t. params; its input and the earlier blocks' K/V are
  stop-gradient). context_noise: t of the context pass; context_noise_mode "reference" adds noise at that t
  through `gen_grid` before the pass (Quirk: §1.4, t = 0 still adds σ = 0.00498 on the shift-5 grid while the
  network is told t = 0), "none" feeds the clean x0_hat (inference, `wanjax.sampling_ar`).
  differentiable=False skips the gradient pass and returns the simulation's own x0_hat (critic rollouts).
  """
  if context_noise_mode not in CONTEXT_NOISE_MODES:
    raise UsageError(f"context_noise_mode={context_noise_mode!r}; valid: {', '.join(CONTEXT_NOISE_MODES)}")
  fpb = int(frames_per_block)
  ts = jnp.asarray(timesteps, F32)                                        # [N]
  sig_next = jnp.concatenate([gen_grid.sigma(ts[1:]), jnp.zeros((1,), F32)])
  b, f, h, w, _ = noise.shape
  blocks = _blocks(noise, fpb)                                            # [nb, B, fpb, H, W, C]
  nb = blocks.shape[0]
  exits = jnp.broadcast_to(jnp.asarray(exit_index, jnp.int32), (nb,))
  t_ctx = jnp.full((b,), context_noise, F32)

  frozen = jax.lax.stop_gradient(params)
  ckv_frozen = denoise.prompt_kv(frozen)
  cache0 = denoise.init_cache(frozen, b, f, h, w)

  def simulate(cache, xs):
    """One block without gradient: steps 0..j, then the context pass. Returns (cache, (x_j, x0_hat))."""
    blk, x, j = xs
    start = blk * fpb

    def step(i, carry):
      x, cache = carry
      t = jnp.full((b,), ts[i])
      v, cache = denoise.cached(frozen, cache, ckv_frozen, x, t, start)
      x0 = dmd.x0_from_v(x, v, t, gen_grid)
      s = sig_next[i]
      return ((1 - s) * x0 + s * renoise_draw(key, blk, i, x.shape)).astype(x.dtype), cache

    x, cache = jax.lax.fori_loop(0, j, step, (x, cache))
    t = jnp.full((b,), ts[j])
    v, cache = denoise.cached(frozen, cache, ckv_frozen, x, t, start)
    x0 = dmd.x0_from_v(x, v, t, gen_grid)
    x_ctx = x0
    if context_noise_mode == "reference":
      eps = jax.random.normal(_context_key(key, blk), x0.shape, F32)
      x_ctx = dmd.add_noise(x0, eps, t_ctx, gen_grid)
    _, cache = denoise.cached(frozen, cache, ckv_frozen, x_ctx.astype(x.dtype), t_ctx, start)
    return cache, (x, x0)

  cache, (x_exit, x0_sim) = jax.lax.stop_gradient(
      jax.lax.scan(simulate, cache0, (jnp.arange(nb, dtype=jnp.int32), blocks, exits)))
  if not differentiable:
    return _unblocks(x0_sim)

  ckv = denoise.prompt_kv(params)   # with gradient: the exit forwards' cross-attention K/V depend on params

  def exit_forward(_, xs):
    blk, x, j = xs
    t = jnp.full((b,), ts[j])
    v, _ = denoise.cached(params, cache, ckv, x, t, blk * fpb)
    return None, dmd.x0_from_v(x, v, t, gen_grid)

  _, x0 = jax.lax.scan(exit_forward, None, (jnp.arange(nb, dtype=jnp.int32), x_exit, exits))
  return _unblocks(x0)


# ------------------------------------------------------------------------------------------------ CausVid

def noised_data_rollout(denoise: Denoiser, params, latents, key, exit_index, *, timesteps,
                        gen_grid: dmd.SigmaGrid, frames_per_block):
  """CausVid DMD generator pass without backward simulation (§3.4). Returns x0_hat `[B, F, H, W, C]` float32.

  latents `[B, F, H, W, C]`: clean data latents. The list is `timesteps` plus 0 (the clean latent); per sample
  and block an index k ~ U{0..K−1}; frames with t > 0 get `add_noise(x, eps, t)` (grid lookup), frames with
  t = 0 stay clean; one parallel block-causal forward with per-frame t. `exit_index` is unused (CausVid draws
  its own per-block indices from `key`).
  """
  del exit_index
  fpb = int(frames_per_block)
  ts = jnp.asarray(tuple(float(t) for t in timesteps) + (0.0,), F32)    # [K]
  b, f = latents.shape[:2]
  if f % fpb:
    raise UsageError(f"{f} latent frames are not a multiple of frames_per_block={fpb}")
  k_idx, k_eps = jax.random.split(key)
  idx = jnp.repeat(jax.random.randint(k_idx, (b, f // fpb), 0, ts.shape[0]), fpb, axis=1)   # [B, F]
  t = ts[idx]
  x = latents.astype(F32)
  eps = jax.random.normal(k_eps, x.shape, F32)
  noisy = jnp.where(dmd._bcast(t > 0, x), dmd.add_noise(x, eps, t, gen_grid), x)
  noisy = jax.lax.stop_gradient(noisy)
  return dmd.x0_from_v(noisy, denoise.parallel(params, noisy, t, fpb), t, gen_grid)


# ------------------------------------------------------------------------------------------------ dispatch

def rollout_for(c, settings: dmd.DMDSettings):
  """(generator rollout, critic rollout) for a training config: `c.rollout.kind` when present, else the
  bidirectional rollout. The critic's is the same rollout without its gradient pass."""
  kind = c.rollout.kind if "rollout" in c else "bidirectional"
  if kind not in ROLLOUTS:
    raise UsageError(f"rollout.kind={kind!r}; valid: {', '.join(ROLLOUTS)}")
  common = dict(timesteps=settings.timesteps, gen_grid=settings.gen_grid)
  if kind == "bidirectional":
    r = functools.partial(dmd.bidirectional_rollout, **common)
    return r, r
  fpb = int(c.rollout.frames_per_block)
  if fpb < 1 or c.data.latent_shape[0] % fpb:
    raise UsageError(f"rollout.frames_per_block={fpb} must be >= 1 and divide the latent frames "
                     f"{c.data.latent_shape[0]} (SF/CV: 3 of 21)")
  if kind == "noised_data":
    r = functools.partial(noised_data_rollout, frames_per_block=fpb, **common)
    return r, r
  if c.rollout.context_noise_mode not in CONTEXT_NOISE_MODES:
    raise UsageError(f"rollout.context_noise_mode={c.rollout.context_noise_mode!r}; valid: "
                     f"{', '.join(CONTEXT_NOISE_MODES)}")
  r = functools.partial(causal_rollout, frames_per_block=fpb, context_noise=float(c.rollout.context_noise),
                        context_noise_mode=c.rollout.context_noise_mode, **common)
  return r, functools.partial(r, differentiable=False)


def uses_data(c) -> bool:
  """Whether the generator starts from data latents (CausVid) rather than from noise."""
  return "rollout" in c and c.rollout.kind == "noised_data"
