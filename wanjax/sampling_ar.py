"""Block-wise autoregressive sampling of a causal Wan DiT with a static-shape KV cache: Self-Forcing, CausVid,
LightX2V CausVid (9-step list, `num_fragments`), CausVid multi-rollout long videos, streaming VAE decode.

Mirrors Self-Forcing `pipeline/causal_inference.py` and CausVid `causvid/models/wan/causal_inference.py`
(spec `distillation.md` §4.2), CausVid `minimal_inference/longvideo_autoregressive_inference.py` and the
legacy LightX2V `wan2.1_causvid` runner (§4.4–4.5):

  for each block b (frames [b·nfpb, (b+1)·nfpb)):
    x = noise[:, block]
    for i, t_i in enumerate(timesteps):
      v = G(x, t_i; cache, start_frame)                      # writes the block's K/V (overwrites on re-runs)
      x0 = x − σ_i·v;  x = (1 − σ_{i+1})·x0 + σ_{i+1}·ε_new   # "renoise" update (fresh noise)
    out[:, block] = x0
    G(x0, t = context_noise; cache, start_frame)             # clean context pass: cache holds clean K/V
                                                             # (skipped after the last block: unread)

One compiled program (`_forward`) serves every model call: the block's frame offset and the timestep are traced
values and the cache is a fixed-shape pytree (donated, updated in place). Each reference choice that a port must
make on purpose is a named option of `AROptions` with the reference default (spec §9):
`sigma_lookup` (nearest-grid σ, §0.3), `warp` (§0.4), `update`, `context_pass` / `context_noise` (§1.4, §4.4),
`rolling` / `sink_frames` (§4.3), `long_video` (§4.4).

Noise: `noise` is the full initial latent; re-noise draws are `normal(fold_in(fold_in(rng, block), step))`
unless `renoise` `[num_denoised_blocks, N−1, B, nfpb, H, W, C]` is given (consumed in order).
"""

import dataclasses
import functools
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from wanjax import schedules
from wanjax.dit import kv_cache
from wanjax.errors import UsageError
from wanjax.sampling import check_solver_sigmas
from wanjax.solvers import get_solver

F32 = jnp.float32
UPDATES = ("renoise", "euler", "unipc")
SIGMA_LOOKUPS = ("grid", "exact")
LONG_VIDEO = ("none", "rollouts", "fragments")

# Python-side trace counts of the jitted programs (tests assert one trace for all blocks and frame counts).
TRACE_COUNTS = {"forward": 0, "prompt": 0}


@dataclasses.dataclass(frozen=True)
class AROptions:
  """Typed options of the AR samplers; defaults are Self-Forcing inference (spec §4.2, §0.4)."""
  frames_per_block: int = 3                       # SF/CV num_frame_per_block
  steps: tuple = (1000, 750, 500, 250)            # raw denoising_step_list (a trailing 0 is dropped)
  shift: float = 5.0                              # generator grid shift: 5 (SF), 8 (CV)
  warp: bool = True                               # SF warp_denoising_step: t = 1000·shift(s/1000)
  # Quirk: §0.3 — σ for x0 = x − σ·v and for re-noising is the nearest point of the 1000-point shift grid
  # ("grid", reference), not t/1000 ("exact"). Equal for SF's warped list; CV's 757 → σ 0.75676.
  sigma_lookup: str = "grid"
  update: str = "renoise"                         # renoise (SF/CV, fresh noise) | euler | unipc (LX 2025)
  # Quirk: §4.4 — the LX causvid runner has no clean context pass: each block's cache holds the K/V of its last
  # denoising call's (noisy) input.
  context_pass: bool = True
  context_noise: float = 0.0                      # t of the context pass; inference adds no noise (§1.4)
  cache_frames: int = 21                          # buffer size in latent frames (SF: 32760 tokens)
  rolling: bool = False                           # SF local_attn_size = cache_frames with a sink
  sink_frames: int = 0                            # SF sink_size
  long_video: str = "none"                        # none | rollouts (CV) | fragments (LX num_fragments)
  num_segments: int = 1                           # rollouts / fragments
  overlap_frames: int = 3                         # CV rollout overlap in latent frames (multiple of nfpb)
  # Attention lengths (non-rolling caches): the buffer is attended in `kv_buckets` static prefixes, the shortest
  # one that covers the block (one compiled program each), instead of always the whole buffer with the unused
  # slots masked. 1 = one program for every block; the outputs agree to float rounding for any value.
  kv_buckets: int = 1
  # The stacked KV cache rides in the DiT's layer-loop carry and each call writes its block in place (the same
  # values as threading per-layer slices through the loop, which moves every layer's whole slice in and out and
  # copies the whole cache at the program's edges; docs/decisions.md "KV cache in the carry"). False: that form.
  cache_in_carry: bool = True

  def validate(self):
    if self.frames_per_block < 1:
      raise UsageError(f"frames_per_block={self.frames_per_block} must be >= 1 (SF/CV use 3)")
    for name, val, valid in (("update", self.update, UPDATES), ("sigma_lookup", self.sigma_lookup, SIGMA_LOOKUPS),
                             ("long_video", self.long_video, LONG_VIDEO)):
      if val not in valid:
        raise UsageError(f"{name}={val!r}; valid: {', '.join(valid)}")
    if self.num_segments < 1:
      raise UsageError(f"num_segments={self.num_segments} must be >= 1")
    if self.kv_buckets < 1:
      raise UsageError(f"kv_buckets={self.kv_buckets} must be >= 1 (1 = attend the whole KV buffer in one program)")
    if self.rolling and self.kv_buckets > 1:
      raise UsageError(f"kv_buckets={self.kv_buckets} needs a non-rolling cache (a rolling one is attended whole); "
                       f"set kv_buckets=1 with rolling=True")
    if self.long_video == "rollouts" and (self.overlap_frames < self.frames_per_block
                                          or self.overlap_frames % self.frames_per_block):
      raise UsageError(f"overlap_frames={self.overlap_frames} must be a positive multiple of frames_per_block="
                       f"{self.frames_per_block} (CausVid uses 3)")
    if not self.rolling and self.sink_frames:
      raise UsageError(f"sink_frames={self.sink_frames} is only used by a rolling cache; set rolling=True, or "
                       f"sink_frames=0")
    if self.rolling and not 0 <= self.sink_frames < self.cache_frames - self.frames_per_block + 1:
      raise UsageError(f"sink_frames={self.sink_frames} leaves no room for a block of {self.frames_per_block} "
                       f"frames in a rolling cache of {self.cache_frames} frames")
    check_solver_sigmas(self.update, schedule(self)[1])
    return self


def schedule(opts: AROptions):
  """(timesteps float32 [N] the DiT sees, sigmas float32 [N+1] ending in 0 for x0 and re-noise)."""
  steps = [float(s) for s in opts.steps]
  if steps and steps[-1] == 0:
    steps = steps[:-1]          # SF/CV drop the trailing 0 of the list
  if not steps:
    raise UsageError("steps=() is empty; give a decreasing list such as (1000, 750, 500, 250)")
  if any(not 0 < s <= 1000 for s in steps) or any(a <= b for a, b in zip(steps, steps[1:])):
    raise UsageError(f"steps={tuple(opts.steps)} must be strictly decreasing in (0, 1000]")
  if opts.warp:
    sigmas, timesteps = schedules.step_list_sigmas([int(round(s)) for s in steps], opts.shift)
    return timesteps.astype(np.float32), sigmas
  timesteps = np.asarray(steps, np.float32)
  if opts.sigma_lookup == "grid":
    sig = schedules.nearest_grid_sigma(timesteps, opts.shift)
  else:
    sig = timesteps / np.float32(schedules.NUM_TRAIN_TIMESTEPS)
  return timesteps, np.concatenate([sig, [0.0]]).astype(np.float32)


# ------------------------------------------------------------------------------------------ jitted programs


@functools.partial(jax.jit, static_argnums=(0, 8, 9), donate_argnums=3)
def _forward(graphdef, params, rest, cache, cross_kv, x, t, start_frame, kv_len=None, carried=True):
  """The program of every model call (one per `kv_len`): (velocity, cache with this block's K/V written)."""
  TRACE_COUNTS["forward"] += 1
  model = nnx.merge(graphdef, params, rest)
  return kv_cache.cached_forward(model, cache, cross_kv, x, t, start_frame, kv_len, carried)


def kv_bucket_frames(cache_frames, frames_per_block, buckets):
  """The attention lengths in latent frames for `AROptions.kv_buckets`: `buckets` block-aligned prefixes spread
  evenly over the buffer's blocks, the last one the whole buffer (21 frames, blocks of 3, 4 buckets:
  6, 12, 18, 21)."""
  nb = -(-cache_frames // frames_per_block)
  k = min(buckets, nb)
  return sorted({min(cache_frames, frames_per_block * -(-nb * i // k)) for i in range(1, k + 1)})


@functools.partial(jax.jit, static_argnums=0)
def _prompt(graphdef, params, rest, context):
  TRACE_COUNTS["prompt"] += 1
  return kv_cache.prompt_kv(nnx.merge(graphdef, params, rest), context)


@functools.partial(jax.jit, static_argnums=0)
def _update(kind, state, x, v, i, sigmas, eps):
  """One denoising update at step i: (x0, x_{i+1}, solver state)."""
  x, v = x.astype(F32), v.astype(F32)
  x0 = x - sigmas[i] * v
  if kind == "renoise":
    s = sigmas[i + 1]
    return x0, (1.0 - s) * x0 + s * eps.astype(F32), state
  x_next, state = get_solver(kind).step(state, x, v, i, sigmas, None)
  return x0, x_next, state


@jax.jit
def _draw(rng, block, step, like):
  return jax.random.normal(jax.random.fold_in(jax.random.fold_in(rng, block), step), like.shape, F32)


# ------------------------------------------------------------------------------------------ the sampler


class ARSampler:
  """Block-wise AR sampler bound to one model (split once), one prompt and one cache.

  `generate(noise, ...)` returns the latent `[B, F, H, W, C]` float32. `on_block(latents)` is called with each
  finished block (for streaming decode). `stats` counts model calls and blocks.
  """

  def __init__(self, model, opts: AROptions, *, batch, height, width):
    self.opts = opts.validate()
    self.timesteps, self.sigmas = schedule(opts)
    pt, ph, pw = model.cfg.patch_size
    if height % ph or width % pw:
      raise UsageError(f"latent height×width {height}×{width} must be divisible by the patch {ph}×{pw}")
    self.tokens_per_frame = (height // ph) * (width // pw)
    self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
    self.cache = kv_cache.cache_for(model, batch, opts.cache_frames, self.tokens_per_frame,
                                    rolling=opts.rolling, sink_frames=opts.sink_frames)
    kv_cache.check_block_fits(self.cache, opts.frames_per_block * self.tokens_per_frame)
    self.kv_frames = kv_bucket_frames(opts.cache_frames, opts.frames_per_block, opts.kv_buckets)
    self.cross_kv = None
    self.stats = {"model_calls": 0, "blocks": 0}

  def set_prompt(self, context):
    """Cross-attention K/V for `context` `[B, S, text_dim]`, computed once and reused by every call."""
    self.cross_kv = _prompt(self.graphdef, self.params, self.rest, jnp.asarray(context, F32))

  def reset(self):
    self.cache = kv_cache.reset(self.cache)

  def call(self, x, t, start_frame):
    """One model call on a block at absolute latent frame `start_frame`; returns the velocity."""
    if self.cross_kv is None:
      raise UsageError("set_prompt(context) must be called before sampling")
    b = x.shape[0]
    t = jnp.full((b,), t, F32)
    v, self.cache = _forward(self.graphdef, self.params, self.rest, self.cache, self.cross_kv, x, t,
                             jnp.asarray(start_frame, jnp.int32), self.kv_len(int(start_frame) + x.shape[1]),
                             self.opts.cache_in_carry)
    self.stats["model_calls"] += 1
    return v

  def kv_len(self, end_frame):
    """The static attention length (slots) of a call whose block ends at latent frame `end_frame`: the shortest
    bucket that covers it; None for the whole buffer (always with one bucket or a rolling cache)."""
    if self.opts.rolling:
      return None
    frames = next((f for f in self.kv_frames if f >= end_frame), None)
    if frames is None or frames * self.tokens_per_frame >= self.cache.size:
      return None
    return frames * self.tokens_per_frame

  def _check_span(self, end_frame):
    if not self.opts.rolling and end_frame > self.opts.cache_frames:
      raise UsageError(f"{end_frame} latent frames exceed the KV cache of cache_frames={self.opts.cache_frames}; "
                       "raise cache_frames, or use rolling=True (with sink_frames) or a long_video mode")

  def denoise_block(self, x, start_frame, eps_for):
    """The N-step loop of one block from noise x; returns (x0, the last call's input)."""
    sig = jnp.asarray(self.sigmas)
    state = get_solver(self.opts.update).init_state(x) if self.opts.update != "renoise" else {}
    zeros = jnp.zeros(x.shape, F32)
    n = len(self.timesteps)
    for i, t in enumerate(self.timesteps):
      v = self.call(x, t, start_frame)
      eps = eps_for(i) if (i < n - 1 and self.opts.update == "renoise") else zeros
      x0, x_next, state = _update(self.opts.update, state, x, v, jnp.int32(i), sig, eps)
      if i < n - 1:
        x = x_next
    # The solver's last step lands on σ = 0; for every update the block output is x0 of the last call.
    return x0, x

  def context(self, x0, start_frame):
    """Writes clean K/V of a finished block (SF/CV context pass, t = context_noise, output unused)."""
    self.call(x0, self.opts.context_noise, start_frame)

  def run_blocks(self, noise, *, first_block=0, frame_offset=0, prefix=None, rng=None, renoise=None,
                 renoise_start=0, on_block=None, context_last=False):
    """Generates blocks `first_block..` of `noise` `[B, F, H, W, C]` at absolute frames `frame_offset + ...`.

    The context pass after the last block is skipped unless `context_last=True`: it only writes the K/V of a
    block that no later call reads, since every caller in `generate` resets the cache or drops the sampler
    next. That saves one model call per run (per segment in the long-video modes) and changes no output; the
    references run it. A caller that goes on from this cache passes `context_last=True`.

    `prefix` `[B, k·nfpb, H, W, C]`: clean latents teacher-forced into the cache first (t = context_noise, one
    call per block, output copied). Returns (latents `[B, F, H, W, C]`, last-call inputs per block).
    """
    nf = self.opts.frames_per_block
    f = noise.shape[1]
    if f % nf:
      raise UsageError(f"{f} latent frames are not a multiple of frames_per_block={nf}")
    self._check_span(frame_offset + f)
    out, last_inputs = [], []
    k = 0
    if prefix is not None:
      for j in range(prefix.shape[1] // nf):
        blk = jnp.asarray(prefix[:, j * nf:(j + 1) * nf], F32)
        self.context(blk, frame_offset + j * nf)
        out.append(blk)
        last_inputs.append(blk)
        if on_block is not None:
          on_block(blk)
      k = prefix.shape[1] // nf
    r = renoise_start
    for b in range(max(k, first_block), f // nf):
      s = frame_offset + b * nf
      x = jnp.asarray(noise[:, b * nf:(b + 1) * nf], F32)
      if self.opts.update != "renoise":
        eps_for = None                               # deterministic updates draw nothing
      elif renoise is not None:
        if r >= renoise.shape[0]:
          raise UsageError(f"renoise has {renoise.shape[0]} blocks of draws; block {b} needs more")
        eps_for = functools.partial(lambda rr, i: jnp.asarray(renoise[rr, i], F32), r)
      else:
        if rng is None:
          raise UsageError("update='renoise' draws fresh noise; pass rng=jax.random.key(seed) or renoise=...")
        eps_for = functools.partial(lambda bb, i: _draw(rng, bb, i, x), s)
      x0, last = self.denoise_block(x, s, eps_for)
      r += 1
      if self.opts.context_pass and (context_last or b < f // nf - 1):
        self.context(x0, s)
      out.append(x0)
      last_inputs.append(last)
      self.stats["blocks"] += 1
      if on_block is not None:
        on_block(x0)
    return jnp.concatenate(out, axis=1), last_inputs


# ------------------------------------------------------------------------------------------ streaming decode


@functools.partial(jax.jit, static_argnums=0)
def _decode_first(graphdef, state, z):
  vae = nnx.merge(graphdef, state)
  y, cache = vae.decoder.step(vae.conv2(vae.denormalize(z).astype(vae.policy.compute_dtype)), None, first=True)
  return jnp.clip(y.astype(F32), -1.0, 1.0), cache


@functools.partial(jax.jit, static_argnums=0)
def _decode_next(graphdef, state, cache, z):
  vae = nnx.merge(graphdef, state)
  y, cache = vae.decoder.step(vae.conv2(vae.denormalize(z).astype(vae.policy.compute_dtype)), cache)
  return jnp.clip(y.astype(F32), -1.0, 1.0), cache


class StreamDecoder:
  """Decodes latent frames as they arrive with the VAE's causal feature cache (the chunked decode of
  `WanVAE.decode`, one latent frame at a time): frame 0 gives 1 pixel frame, each later one 4."""

  def __init__(self, vae):
    self.graphdef, self.state = nnx.split(vae)
    self.cache = None

  def reset(self):
    self.cache = None

  def push(self, latents):
    """Normalised latents `[B, f, h, w, z]` → pixel frames `[B, T, H, W, 3]` in [−1, 1] (float32)."""
    ys = []
    for j in range(latents.shape[1]):
      z = jnp.asarray(latents[:, j:j + 1], F32)
      if self.cache is None:
        y, self.cache = _decode_first(self.graphdef, self.state, z)
      else:
        y, self.cache = _decode_next(self.graphdef, self.state, self.cache, z)
      ys.append(y)
    return jnp.concatenate(ys, axis=1)


# ------------------------------------------------------------------------------------------ whole videos


@dataclasses.dataclass
class ARResult:
  latents: jax.Array              # [B, F_total, H, W, C]: none/fragments: the video; rollouts: rollouts concatenated
  stats: dict
  num_pixel_frames: int = 0       # frames handed to `on_frames`


def generate(model, context, noise, opts: AROptions, *, rng=None, renoise=None, vae=None,
             on_frames: Optional[Callable] = None) -> ARResult:
  """A whole AR video. noise `[B, F_noise, H, W, C]`:

  - long_video='none': F_noise = F (≤ cache_frames unless rolling), a multiple of frames_per_block;
  - 'fragments' (LX num_fragments, §4.4): F_noise = F + (n−1)·(F − nfpb) = the output length; fragment k > 0
    resets the cache, re-runs the previous fragment's last block at the last timestep (slot 0, RoPE restarts),
    then generates F − nfpb new frames;
  - 'rollouts' (CV, §4.4): F_noise = n·F; rollout k > 0 teacher-forces [VAE.encode(pixel frame −(4(o−1)+1)),
    last o−1 latents] and generates the rest; needs `vae`. Each rollout keeps all but its last 4(o−1)+1 pixel
    frames (216 for 3 rollouts of 81).

  With `vae`, finished blocks are decoded as they come (causal VAE cache) and `on_frames(frames [B, T, H, W, 3])`
  receives pixel frames in order. Each block's frames are handed over once the next block's calls are queued on
  the device (their copy to the host started when they were queued), so a callback that waits for them (writes
  them out) never leaves the device idle; the last block's frames come at the end. `stats` gains total_s and
  ttff_s, the time until the first frames are computed (waited for, not just dispatched).
  """
  opts.validate()
  noise = jnp.asarray(noise, F32)
  b, f_noise, h, w, _ = noise.shape
  sampler = ARSampler(model, opts, batch=b, height=h, width=w)
  sampler.set_prompt(context)
  n_steps = len(sampler.timesteps)
  if renoise is not None:
    renoise = jnp.asarray(renoise, F32)
    if renoise.ndim != 7 or renoise.shape[1] != n_steps - 1 or renoise.shape[2:] != (
        b, opts.frames_per_block, h, w, noise.shape[-1]):
      raise UsageError(f"renoise has shape {renoise.shape}; expected [num_blocks, {n_steps - 1}, {b}, "
                       f"{opts.frames_per_block}, {h}, {w}, {noise.shape[-1]}]")
  t_start = time.perf_counter()
  stats = sampler.stats
  emitted = [0]
  decoder = StreamDecoder(vae) if vae is not None else None
  pending = []   # frames dispatched but not yet handed over: at most one block's

  def deliver(frames):
    if emitted[0] == 0:   # computed, not just queued (the next block is queued behind them by now)
      jax.block_until_ready(frames)
      stats["ttff_s"] = time.perf_counter() - t_start
    emitted[0] += frames.shape[1]
    if on_frames is not None:
      on_frames(frames)

  def emit(frames):
    if frames.shape[1] == 0:
      return
    if hasattr(frames, "copy_to_host_async"):
      frames.copy_to_host_async()
    pending.append(frames)
    if len(pending) > 1:
      deliver(pending.pop(0))

  mode, nseg = opts.long_video, opts.num_segments
  if mode == "rollouts":
    if vae is None:
      raise UsageError("long_video='rollouts' re-encodes the overlap with the VAE; pass vae=...")
    if f_noise % nseg:
      raise UsageError(f"noise has {f_noise} frames; rollouts need num_segments={nseg} × frames per rollout")
    latents = _rollouts(sampler, decoder, noise, nseg, opts, rng, renoise, emit)
  elif mode == "fragments":
    latents = _fragments(sampler, decoder, noise, nseg, opts, rng, renoise, emit)
  else:
    on_block = None
    if decoder is not None:
      on_block = lambda blk: emit(decoder.push(blk))  # noqa: E731
    latents, _ = sampler.run_blocks(noise, rng=rng, renoise=renoise, on_block=on_block)
  while pending:
    deliver(pending.pop(0))
  latents = jax.block_until_ready(latents)
  stats["total_s"] = time.perf_counter() - t_start
  return ARResult(latents, dict(stats), emitted[0])


def fragment_frames(frames_per_fragment, nfpb, num_fragments):
  """Output latent frames of LX `num_fragments`: F + (n−1)·(F − nfpb) (21 + (n−1)·18 for SF sizes)."""
  return frames_per_fragment + (num_fragments - 1) * (frames_per_fragment - nfpb)


def _fragments(sampler, decoder, noise, nseg, opts, rng, renoise, emit):
  nf = opts.frames_per_block
  f_total = noise.shape[1]
  # Solve F + (n-1)(F - nf) = f_total for the per-fragment length F.
  per = (f_total + (nseg - 1) * nf) // nseg
  if fragment_frames(per, nf, nseg) != f_total or per % nf or per <= nf:
    raise UsageError(f"noise has {f_total} frames; fragments need F + (n−1)·(F − {nf}) frames with F a multiple "
                     f"of {nf} (e.g. {fragment_frames(21, nf, nseg)} for F = 21, n = {nseg})")
  on_block = (lambda blk: emit(decoder.push(blk))) if decoder is not None else None
  lat, last_inputs = sampler.run_blocks(noise[:, :per], rng=rng, renoise=renoise, on_block=on_block)
  parts, used = [lat], per // nf
  for k in range(1, nseg):
    sampler.reset()
    if opts.context_pass:
      sampler.context(lat[:, -nf:], 0)
    else:
      # Quirk: §4.4 — the previous fragment's last block is re-run at the last denoising timestep on its last
      # input (LX `scheduler.last_sample`) to recompute its K/V in slot 0 (RoPE restarts at frame 0).
      sampler.call(last_inputs[-1], sampler.timesteps[-1], 0)
    a = per + (k - 1) * (per - nf)
    seg = jnp.concatenate([jnp.zeros_like(noise[:, :nf]), noise[:, a:a + per - nf]], axis=1)
    lat, last_inputs = sampler.run_blocks(seg, first_block=1, rng=_seg_rng(rng, k), renoise=renoise,
                                          renoise_start=used, on_block=on_block)
    parts.append(lat)                          # run_blocks returns the generated blocks 1.. only
    used += per // nf - 1
  return jnp.concatenate(parts, axis=1)


def _seg_rng(rng, k):
  return None if rng is None else jax.random.fold_in(rng, 1_000_003 * k)


def _rollouts(sampler, decoder, noise, nseg, opts, rng, renoise, emit):
  """CausVid long video: independent rollouts chained through a re-encoded overlap block."""
  per = noise.shape[1] // nseg
  o = opts.overlap_frames
  drop = 4 * (o - 1) + 1                       # pixel frames each rollout leaves to the next one
  vae = nnx.merge(decoder.graphdef, decoder.state)
  outs, prefix, used = [], None, 0
  for k in range(nseg):
    sampler.reset()
    decoder.reset()
    seg = noise[:, k * per:(k + 1) * per]
    held = []

    def on_block(blk):
      held.append(decoder.push(blk))
      frames = jnp.concatenate(held, axis=1)
      # Stream everything but the last `drop` frames seen so far (those may belong to the overlap).
      ready = frames.shape[1] - drop
      if ready > 0:
        emit(frames[:, :ready])
        held[:] = [frames[:, ready:]]

    lat, _ = sampler.run_blocks(seg, prefix=prefix, rng=_seg_rng(rng, k), renoise=renoise, renoise_start=used,
                                on_block=on_block)
    used += (per - (0 if prefix is None else o)) // opts.frames_per_block
    outs.append(lat)
    pixels = jnp.concatenate(held, axis=1)     # the last `drop` pixel frames of this rollout
    first = vae.encode(pixels[:, :1])          # pixel frame −(4(o−1)+1) as an image latent
    prefix = jnp.concatenate([first, lat[:, per - (o - 1):]], axis=1)
    logging.info("rollout %d/%d done", k + 1, nseg)
  return jnp.concatenate(outs, axis=1)
