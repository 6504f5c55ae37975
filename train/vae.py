"""Wan VAE training on video clips (e.g. the toy world), on the shared loop, and its export with fitted latent
statistics.

No reference trainer is released for the Wan VAE; this is the standard KL-autoencoder recipe on the reference
architecture (`wan/modules/vae.py`, spec `wan_model.md` §4): the encoder's `2·z_dim` output (after the
top-level `conv1` = quant_conv) splits into mu and log-variance, z = mu + σ·ε is decoded (through `conv2` =
post_quant_conv) and the loss is `l1·|x̂ − x| + l2·(x̂ − x)² + kl·KL(q(z|x) ‖ N(0, I))`, all per-element means.
Sampling z during training makes the decoder tolerate the small latent errors a diffusion model leaves; the
reference encoder (and `WanVAE.encode`) uses mu only. Training runs the full-sequence formulation, which the
chunked inference path equals to float rounding (tests/vae/test_chunking.py).

Export fits the latent normalisation (spec §4.6): per-channel mean and std of mu over `export_clips` clips,
stored in the exported `config.json`, so `WanVAE.encode` yields roughly unit-variance latents — what the DiT's
flow-matching noise assumes. The loop (checkpoints, resume, non-finite policy, TensorBoard) is `train/loop.py`.

  python -m train.vae --config configs/train/toyworld_vae.py --workdir runs/vae --config.data.clips=data/toyworld
  python -m train.export --config configs/train/toyworld_vae.py --workdir runs/vae --out ckpt/vae
"""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from train import data, loop
from train import state as st
from train.distill import _run, optimizer
from wanjax import sharding as shd
from wanjax.errors import UsageError
from wanjax.vae.config import VAEConfig
from wanjax.vae.model import WanVAE, create_vae

CLIP_EXTS = (".mp4", ".npy")


# ------------------------------------------------------------------------------------------------ data

def load_clips(folder, *, frames, size, max_clips=0):
  """uint8 `[N, frames, size, size, 3]` clips of a folder of `.mp4` (H.264) or `.npy` (float in [−1, 1]) files,
  sorted by name, the first `max_clips` (0 = all). Held in memory: 17×64×64 clips take 209 KB each."""
  from tqdm import tqdm
  if not folder or not os.path.isdir(folder):
    raise UsageError(f"config.data.clips={folder!r} is not a folder; give a clip folder (python -m "
                     f"wanjax.toyworld.dataset --out DIR writes one)")
  files = sorted(f for f in glob.glob(os.path.join(folder, "*")) if f.endswith(CLIP_EXTS))
  if max_clips:
    files = files[:max_clips]
  if not files:
    raise UsageError(f"config.data.clips={folder!r} holds no {' or '.join(CLIP_EXTS)} clips")
  out = np.empty((len(files), frames, size, size, 3), np.uint8)
  for i, f in enumerate(tqdm(files, desc="load clips", leave=False)):
    if f.endswith(".npy"):
      v = np.round((np.clip(np.load(f), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    else:
      from wanjax.video import read_video
      v = read_video(f)[0]
    if v.shape != out.shape[1:]:
      raise UsageError(f"{f}: clip shape {v.shape}; config.data wants {out.shape[1:]} (frames, size, size, 3)")
    out[i] = v
  return out


def to_video(clips_u8):
  return clips_u8.astype(np.float32) / 127.5 - 1.0


# ------------------------------------------------------------------------------------------------ model

def vae_config(v, latents_mean=None, latents_std=None) -> VAEConfig:
  """VAEConfig from `config.vae`; training uses the identity normalisation (statistics are fitted at export)."""
  z = int(v.z_dim)
  return VAEConfig(dim=int(v.dim), z_dim=z, dim_mult=tuple(v.dim_mult), num_res_blocks=int(v.num_res_blocks),
                   temperal_downsample=tuple(v.temperal_downsample),
                   latents_mean=latents_mean or (0.0,) * z, latents_std=latents_std or (1.0,) * z)


def foreground_mask(video, threshold=0.1, xp=jnp):
  """`[B, T, H, W, 1]` bool: the pixel differs from its clip's median colour by > threshold in some channel
  (`xp` = jnp, or np for host-side metrics such as scripts/vae_recon.py)."""
  b = video.shape[0]
  bg = xp.median(video.reshape(b, -1, video.shape[-1]), axis=1)[:, None, None, None, :]
  return xp.max(xp.abs(video - bg), axis=-1, keepdims=True) > threshold


def foreground_weights(video, fg_weight, threshold=0.1):
  """`[B, T, H, W, 1]` pixel weights 1 + fg_weight·`foreground_mask`.

  For plain-background data such as the toy world: small objects are a few % of the pixels, so an unweighted
  loss learns the background first and the objects only after thousands of steps (docs/toyworld.md)."""
  return 1.0 + fg_weight * foreground_mask(video, threshold).astype(jnp.float32)


def vae_loss(fn, params, video, key, *, l1, l2, kl, sample_latent=True, fg_weight=0.0):
  """video `[B, T, H, W, 3]` in [−1, 1] -> (loss, metrics). Raw (unnormalised) latents. fg_weight > 0 weights
  the reconstruction terms towards foreground pixels (`foreground_weights`, normalised to mean 1)."""
  vae = fn.module(params)
  z_dim = vae.cfg.z_dim
  h = vae.conv1(vae.encoder(video)).astype(jnp.float32)             # [B, F, h, w, 2z]
  mu, logvar = h[..., :z_dim], jnp.clip(h[..., z_dim:], -30.0, 20.0)
  z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape) if sample_latent else mu
  rec = vae.decoder(vae.conv2(z.astype(vae.policy.compute_dtype))).astype(jnp.float32)
  err = rec - video
  if fg_weight:
    w = foreground_weights(video, fg_weight)
    w = w / jnp.mean(w)
    rec_l1, rec_l2 = jnp.mean(jnp.abs(err) * w), jnp.mean(err ** 2 * w)
  else:
    rec_l1, rec_l2 = jnp.mean(jnp.abs(err)), jnp.mean(err ** 2)
  m = {"loss/l1": jnp.mean(jnp.abs(err)), "loss/l2": jnp.mean(err ** 2),
       "loss/kl": 0.5 * jnp.mean(mu ** 2 + jnp.exp(logvar) - 1.0 - logvar),
       "latent/mu_std": jnp.std(mu), "latent/sigma_mean": jnp.mean(jnp.exp(0.5 * logvar))}
  m["psnr"] = 10.0 * jnp.log10(4.0 / jnp.maximum(m["loss/l2"], 1e-10))   # peak-to-peak 2 in [−1, 1]
  loss = l1 * rec_l1 + l2 * rec_l2 + kl * m["loss/kl"]
  return loss, m


def vae_step(state, batch, *, fn, tx, loss_cfg, poison_steps):
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 4)

  def loss_fn(params):
    loss, m = vae_loss(fn, params, batch["video"], key, **loss_cfg)
    return loop.poison(loss, state.step, poison_steps), m

  return st.guarded_generator_step(state, loss_fn, tx, "loss/vae")


def build(c, mesh, rules):
  """(ModelFn, abstract params, param shardings, host init thunk) of the VAE `config.vae` describes."""
  cfg = vae_config(c.vae)
  policy = c.vae.precision
  fn, abstract = st.ModelFn.from_module(nnx.eval_shape(lambda: WanVAE(cfg, policy=policy, rngs=nnx.Rngs(0))))
  shardings = nnx.to_pure_dict(shd.state_shardings(fn.to_state(abstract), mesh, rules))

  def init():  # host-drawn (torch's default conv init): on CPU, device-side init compiles one program per shape
    return nnx.to_pure_dict(nnx.state(create_vae(cfg, policy=policy, seed=c.seed), nnx.Param))

  return fn, abstract, shardings, init


def train(c, workdir):
  if c.objective != "vae":
    raise UsageError(f"objective={c.objective!r}; train.vae trains objective 'vae'")
  mesh = shd.make_mesh(c.mesh)
  rules = shd.override_rules(c.sharding_overrides)
  fn, abstract, param_shardings, init = build(c, mesh, rules)
  tx = optimizer(c.generator)

  def make_state(p):
    return st.TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(c.seed),
                         generator=st.init_trainee(p, tx))

  abstract_state = jax.eval_shape(make_state, abstract)
  shardings = st.state_shardings(abstract_state, mesh, generator=param_shardings, tx_generator=tx)

  def create():
    return jax.jit(make_state, out_shardings=shardings)(init())

  clips = load_clips(c.data.clips, frames=c.data.frames, size=c.data.size, max_clips=c.data.max_clips)
  bsz = c.data.batch_size
  logging.info("VAE: %d clips of %s, batch %d", len(clips), clips.shape[1:], bsz)

  def batch_for(step):
    idx = data.batch_indices(c.seed, step, bsz, len(clips))
    return {"video": jax.device_put(to_video(crop(clips[idx], step)), video_sharding)}

  # Random windows (the VAE is convolutional and causal in time, so short crops train the same kernels at a
  # fraction of the cost; export and inference run on whole clips). 0 = whole clips.
  tf, sf = (c.data.train_frames or c.data.frames), (c.data.train_size or c.data.size)
  if (tf - 1) % 4 or tf > c.data.frames or sf % 16 or sf > c.data.size:
    raise UsageError(f"data.train_frames={tf} must be 4k+1 <= frames={c.data.frames} and data.train_size={sf} a "
                     f"multiple of 16 <= size={c.data.size}")

  def crop(x, step):
    if (tf, sf) == (c.data.frames, c.data.size):
      return x
    rng = np.random.default_rng([c.seed, step, 0xC20])
    t0 = 4 * rng.integers(0, (c.data.frames - tf) // 4 + 1, len(x))   # windows start on a latent boundary
    y0, x0 = rng.integers(0, c.data.size - sf + 1, (2, len(x)))
    return np.stack([v[t:t + tf, a:a + sf, b:b + sf] for v, t, a, b in zip(x, t0, y0, x0)])

  shape = (bsz, tf, sf, sf, 3)
  video_sharding = jax.sharding.NamedSharding(mesh, shd.spec_for(("batch", None, None, None, None), shape, mesh,
                                                                 rules))
  loss_cfg = dict(l1=c.loss.l1, l2=c.loss.l2, kl=c.loss.kl, sample_latent=c.loss.sample_latent,
                  fg_weight=c.loss.get("fg_weight", 0.0))
  step = jax.jit(functools.partial(vae_step, fn=fn, tx=tx, loss_cfg=loss_cfg,
                                   poison_steps=tuple(c.debug.nonfinite_steps)),
                 donate_argnums=0, out_shardings=(shardings, None))
  return _run(c, workdir, abstract_state, shardings, create, lambda s: step, batch_for,
              lrs=(("generator", c.generator.lr),), mesh=mesh, rules=rules)


# ------------------------------------------------------------------------------------------------ export

def latent_stats(vae: WanVAE, clips_u8, batch_size):
  """Per-channel (mean, std) of the encoder's mu (identity-normalised VAE) over `clips_u8`, via the same
  chunked `encode_video` that preprocessing runs."""
  from wanjax.vae import encode_video
  s1 = s2 = 0.0
  n = 0
  for i in range(0, len(clips_u8), batch_size):
    chunk = clips_u8[i:i + batch_size]
    pad = batch_size - len(chunk)   # one compiled shape; padded rows are dropped
    x = to_video(np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk)
    mu = np.asarray(jax.device_get(encode_video(vae, x)), np.float64)[:len(chunk)]
    flat = mu.reshape(-1, mu.shape[-1])
    s1, s2, n = s1 + flat.sum(0), s2 + (flat ** 2).sum(0), n + len(flat)
  mean = s1 / n
  std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
  return mean, std


def export(c, workdir, out_dir, *, step=None):
  """Latest (or `step`) checkpoint of a `train.vae` run -> a `load_vae` directory with fitted statistics."""
  from train import export as ex
  step, state = ex.restore_trained(workdir, step=step)
  params = ex.trained_params(state)
  cfg = vae_config(c.vae)
  vae = ex.module_from_params(lambda: WanVAE(cfg, rngs=nnx.Rngs(0)), params)
  tensors = ex.file_tensors(nnx.state(vae, nnx.Param), params)
  clips = load_clips(c.data.clips, frames=c.data.frames, size=c.data.size, max_clips=c.export_clips)
  mean, std = latent_stats(vae, clips, c.data.batch_size)
  fitted = vae_config(c.vae, tuple(float(v) for v in mean), tuple(float(v) for v in std))
  config = dict(fitted.to_json_dict(), family="vae", source_layout=ex.SOURCE_LAYOUT)
  ex.write_model_dir(out_dir, tensors, config)
  return {"kind": "vae", "step": int(step), "clips": len(clips), "latent_mean": [round(float(v), 4) for v in mean],
          "latent_std": [round(float(v), 4) for v in std], "out": out_dir}


if __name__ == "__main__":
  loop.run_cli(train, "configs/train/toyworld_vae.py:smoke=True")
