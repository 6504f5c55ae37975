"""Reproducibility hooks for causal models (issue 12), end to end on a tiny DiT saved as raw Self-Forcing `.pt`
files (`{"generator": {"model.<original key>": tensor}}`, and with `generator_ema` beside it):

- `infer.forward --causal --frames-per-block N` with `t` `[B]` and per-frame `[B, F]` equals the KV-cached
  block-by-block forward (`wanjax.dit.kv_cache`) of a DiT loaded independently of the CLI from the same tensors;
- the AR sampler (`configs/sample/self_forcing.py`) on that `.pt` with overridden `ar.frames_per_block` and step
  list, injected `init_noise` (both layouts), `renoise`, `text_embeddings`, `save_latents`: two runs are
  bit-identical and equal `wanjax.sampling_ar.generate` on the same tensors; another renoise gives another
  latent; a renoise of the wrong shape exits 2 naming the expected shape (the one subprocess);
- a bidirectional preset (`lightx2v_4step.py:model=tiny`) on the converted directory with the same hooks.

Sizes: the `tiny` preset (D 24, 2 heads, ffn 40, 3 layers, text 20 × 7 rows), latent 4 × 6, 4 latent frames in
blocks of 2, two AR steps. The sampler runs in-process (`infer.sample.run`) so compiled programs are reused.
"""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.sample import lightx2v_4step, self_forcing
from converters import engine
from converters.names import dit as dit_names
from converters.reader import DictSource
from infer import forward as fwd_cli
from infer import sample as S
from infer.models import resolve_dit
from tests.causal.helpers import random_vae
from tests.conftest import max_rel_err
from tests.converters.dit_fixtures import random_original
from wanjax import checkpoint, sampling_ar
from wanjax.dit import kv_cache
from wanjax.dit.config import PRESETS
from wanjax.dit.model import WanDiT
from wanjax.errors import UsageError

pytestmark = pytest.mark.torch
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = PRESETS["tiny"]
TOL_CAUSAL = 1e-5     # parallel block-causal forward vs KV-cached block-by-block forward (issue 12), fp32
TOL_SAME = 1e-6       # CLI vs the library call on the same tensors (the same programs: measured 0)
B, F, H, W, C = 2, 4, 4, 6, 16
NFPB = 2              # frames per block: 2 blocks
STEPS = (1000, 500)   # AR step list (warped at shift 5): 1 re-noise draw per block
FRAMES = 1 + 4 * (F - 1)
SIZE = f"{8 * W}*{8 * H}"


def _torch_pt(path, **nested):
  """A Self-Forcing training checkpoint: each nested dict holds `model.<original key>` torch tensors."""
  import torch
  torch.save({name: {f"model.{k}": torch.from_numpy(v) for k, v in sd.items()} for name, sd in nested.items()},
             str(path))


def _vae_dir(path):
  """A converted tiny VAE directory (random weights), as `converters.convert` writes it."""
  vae = random_vae(seed=3)
  path.mkdir()
  tensors = {k: np.asarray(v.get_value()) for k, v in checkpoint.flat_params(nnx.state(vae)).items()}
  checkpoint.save_tensors(str(path / "model.safetensors"), tensors)
  (path / "config.json").write_text(json.dumps({**vae.cfg.to_json_dict(), "family": "vae"}))


def _reference_dit(sd, name):
  """A WanDiT of `CFG` holding the original-layout tensors `sd`, through the name table (not the CLI's cache)."""
  arrays = engine.to_arrays(DictSource(sd), dit_names.plan("wan", CFG.to_json_dict()),
                            ignore=dit_names.IGNORE["wan"], expected=dit_names.file_shapes(CFG))
  path = os.path.join(os.environ["WANJAX_CACHE"], f"reference_{name}.safetensors")
  if not os.path.exists(path):
    checkpoint.save_tensors(path, arrays)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: WanDiT(CFG, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, checkpoint.load_state(abstract, [path]))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """raw/sf.pt (generator only) and raw/sf_ema.pt (generator + a different generator_ema) with the config.json a
  tiny model needs beside it (head count and text_len are not inferable from dim 24), a converted tiny VAE, the
  injected tensors, and a private conversion cache."""
  d = tmp_path_factory.mktemp("repro")
  gen, ema = random_original(CFG, seed=21), random_original(CFG, seed=22)
  (d / "raw").mkdir()
  _torch_pt(d / "raw" / "sf.pt", generator=gen)
  _torch_pt(d / "raw" / "sf_ema.pt", generator=gen, generator_ema=ema)
  (d / "raw" / "config.json").write_text(json.dumps({"dim": CFG.dim, "num_heads": CFG.num_heads,
                                                     "num_layers": CFG.num_layers, "text_len": CFG.text_len}))
  (d / "raw_tl9").mkdir()                                       # a config.json that disagrees with the preset
  _torch_pt(d / "raw_tl9" / "sf.pt", generator=gen)
  (d / "raw_tl9" / "config.json").write_text(json.dumps({"num_heads": CFG.num_heads, "text_len": 9}))
  _vae_dir(d / "vae")
  rng = np.random.default_rng(23)
  noise = rng.standard_normal((C, F, H, W)).astype(np.float32)
  np.save(d / "noise.npy", noise)
  np.save(d / "noise5.npy", noise[None])
  np.save(d / "noise_b.npy", rng.standard_normal((C, F, H, W)).astype(np.float32))
  renoise = rng.standard_normal((F // NFPB, len(STEPS) - 1, C, NFPB, H, W)).astype(np.float32)
  np.save(d / "renoise.npy", renoise)
  np.save(d / "renoise_b.npy", rng.standard_normal(renoise.shape).astype(np.float32))
  np.save(d / "renoise_bad.npy", renoise[:, :, :, :1])
  context = rng.standard_normal((5, CFG.text_dim)).astype(np.float32)
  np.savez(d / "emb.npz", context=context)                      # CFG-free presets: no negative_context needed
  old = os.environ.get("WANJAX_CACHE")
  os.environ["WANJAX_CACHE"] = str(d / "cache")
  os.makedirs(d / "cache", exist_ok=True)
  yield dict(dir=d, gen=gen, ema=ema, noise=noise, renoise=renoise, context=context)
  if old is None:
    os.environ.pop("WANJAX_CACHE", None)
  else:
    os.environ["WANJAX_CACHE"] = old


def _cache_dir():
  return os.path.join(os.environ["WANJAX_CACHE"], "converted")   # where infer.sample converts (default_cache_dir)


# ---------------------------------------------------------------------------------------------------------------
# infer.forward --causal == KV-cached block-by-block forward


@functools.partial(jax.jit, static_argnums=0)
def _cached_blocks(graphdef, params, x, t, ctx):
  """Blocks of NFPB frames in order through `kv_cache.cached_forward`; x `[B, F, H, W, C]`, t `[B, F]`."""
  model = nnx.merge(graphdef, params)
  cache = kv_cache.cache_for(model, x.shape[0], F, (H // 2) * (W // 2))
  ckv = kv_cache.prompt_kv(model, ctx)
  outs = []
  for b in range(F // NFPB):
    sl = slice(b * NFPB, (b + 1) * NFPB)
    v, cache = kv_cache.cached_forward(model, cache, ckv, x[:, sl], t[:, sl], b * NFPB)
    outs.append(v)
  return jnp.concatenate(outs, axis=1)


def _kv_cached(sd, name, x, t, context):
  """Channels-first velocity of the cached block-by-block forward; t `[B]` is broadcast to frames."""
  ctx = np.concatenate([context, np.zeros((B, CFG.text_len - context.shape[1], CFG.text_dim), np.float32)], 1)
  t = t if t.ndim == 2 else np.repeat(t[:, None], F, axis=1)
  v = _cached_blocks(*nnx.split(_reference_dit(sd, name)), np.moveaxis(x, 1, -1), t, ctx)
  return np.moveaxis(np.asarray(v), -1, 1)


@pytest.mark.parametrize("pt,weights,per_frame", [("sf.pt", "gen", False), ("sf_ema.pt", "ema", True)])
def test_causal_forward_equals_kv_cached_blocks(files, pt, weights, per_frame):
  """`t` [B] on a generator-only file, per-frame `[B, F]` on one with generator_ema (preferred, as SF's EMA
  inference): the parallel masked forward of the raw `.pt` equals the cached forward of those weights."""
  d = files["dir"]
  rng = np.random.default_rng(24)
  x = rng.standard_normal((B, C, F, H, W)).astype(np.float32)
  t = (rng.uniform(0, 1000, (B, F)) if per_frame else np.array([937.5, 250.0])).astype(np.float32)
  context = rng.standard_normal((B, 5, CFG.text_dim)).astype(np.float32)
  np.savez(d / f"in_{pt}.npz", x=x, t=t, context=context)
  got = fwd_cli.forward("dit", str(d / "raw" / pt), str(d / f"in_{pt}.npz"), str(d / f"out_{pt}.npz"),
                        causal=True, frames_per_block=NFPB, cache_dir=_cache_dir())["v"]
  assert got.shape == (B, C, F, H, W) and got.dtype == np.float32
  want = _kv_cached(files[weights], weights, x, t, context)
  err = max_rel_err(got, want)
  print(f"causal forward ({pt}, t {'[B, F]' if per_frame else '[B]'}) vs KV-cached blocks: {err:.2e}")
  assert err <= TOL_CAUSAL
  other = "ema" if weights == "gen" else "gen"
  assert max_rel_err(got, _kv_cached(files[other], other, x, t, context)) > 1e-2, "read the wrong nested dict"


# ---------------------------------------------------------------------------------------------------------------
# The AR sampler on the raw .pt with injected noise


def _ar_config(files, name, noise="noise.npy", renoise="renoise.npy"):
  """self_forcing.py as the command line would set it: --config.model=tiny --config.weights=raw/sf_ema.pt
  --config.ar.frames_per_block=2 --config.timesteps='(1000, 500)' plus the hooks."""
  d = files["dir"]
  c = self_forcing.get_config()
  c.model, c.weights, c.vae, c.dtype = "tiny", str(d / "raw" / "sf_ema.pt"), str(d / "vae"), "float32"
  c.size, c.frames, c.timesteps, c.ar.frames_per_block = SIZE, FRAMES, STEPS, NFPB
  c.text_embeddings, c.init_noise, c.renoise = str(d / "emb.npz"), str(d / noise), str(d / renoise)
  c.save_latents, c.output_dir, c.output_name = str(d / f"{name}.npy"), str(d / "out"), name
  c.compilation_cache = ""
  return c


def _run(c):
  side = S.run(c)
  return np.load(c.save_latents), side


def test_ar_sampler_reproducible_with_injected_noise(files):
  a, side = _run(_ar_config(files, "ar_a"))
  b, _ = _run(_ar_config(files, "ar_b", noise="noise5.npy"))     # [1, 16, F, H, W] reads as [16, F, H, W]
  assert a.shape == (1, C, F, H, W) and np.isfinite(a).all()
  np.testing.assert_array_equal(a, b)
  assert side["blocks"] == F // NFPB and side["model_calls"] == (F // NFPB) * (len(STEPS) + 1) - 1
  assert side["frames"] == FRAMES and side["config"]["weights"].endswith("sf_ema.pt")

  other, _ = _run(_ar_config(files, "ar_c", renoise="renoise_b.npy"))
  assert max_rel_err(other, a) > 1e-3, "the renoise draws must be consumed"

  # The same run through the library on the tensors themselves (EMA weights, unpadded context zero-padded).
  ctx = np.zeros((1, CFG.text_len, CFG.text_dim), np.float32)
  ctx[0, :files["context"].shape[0]] = files["context"]
  opts = sampling_ar.AROptions(frames_per_block=NFPB, steps=STEPS, shift=5.0)
  renoise = np.moveaxis(files["renoise"], 2, -1)[:, :, None]          # [blocks, steps−1, 1, nfpb, H, W, C]
  res = sampling_ar.generate(_reference_dit(files["ema"], "ema"), ctx, np.moveaxis(files["noise"], 0, -1)[None],
                             opts, renoise=renoise)
  want = np.moveaxis(np.asarray(res.latents), -1, 1)
  err = max_rel_err(a, want)
  print(f"AR CLI vs sampling_ar.generate: {err:.2e}")
  assert err <= TOL_SAME


def test_ar_renoise_shape_error_exits_2(files, tmp_path):
  """The one subprocess: the overrides parsed from the command line decide the expected shape in the message."""
  d = files["dir"]
  cmd = [sys.executable, "-m", "infer.sample", "--config=configs/sample/self_forcing.py", "--config.model=tiny",
         f"--config.weights={d / 'raw' / 'sf_ema.pt'}", f"--config.vae={d / 'vae'}", f"--config.size={SIZE}",
         f"--config.frames={FRAMES}", f"--config.ar.frames_per_block={NFPB}", "--config.timesteps=(1000, 500)",
         f"--config.text_embeddings={d / 'emb.npz'}", f"--config.init_noise={d / 'noise.npy'}",
         f"--config.renoise={d / 'renoise_bad.npy'}", f"--config.output_dir={tmp_path / 'out'}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
  assert f"has shape (2, 1, 16, 1, 4, 6); expected [2, 1, 16, {NFPB}, 4, 6]" in line, line
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override,message", [
    (dict(renoise="renoise_bad.npy"), "expected [2, 1, 16, 2, 4, 6] = [num_blocks, steps−1, C, frames_per_block"),
    (dict(solver="euler"), "only consumed by the fresh-noise update"),
    (dict(frames=1 + 4 * (F - 2)), "3 latent frames, not a multiple of ar.frames_per_block=2"),
    (dict(model="t2v_1_3b", weights="converted"),
     "text_dim=20, text_len=7 but model='t2v_1_3b' has text_dim=4096, text_len=512"),
    (dict(weights="raw_tl9/sf.pt"), "hold a DiT with text_len=9 but model='tiny' has text_len=7"),
])
def test_ar_edge_errors(files, override, message):
  """Caught before anything is compiled (a converted directory before anything is loaded; a raw checkpoint
  once converted)."""
  c = _ar_config(files, "err")
  for k, v in override.items():
    if v == "converted":
      v = resolve_dit(str(files["dir"] / "raw" / "sf_ema.pt"), cache_dir=_cache_dir())
    c[k] = str(files["dir"] / v) if k in ("renoise", "weights") else v
  with pytest.raises(UsageError, match=re.escape(message)):
    S.run(c)


# ---------------------------------------------------------------------------------------------------------------
# A bidirectional preset with the same hooks


def test_bidirectional_preset_hooks(files):
  """lightx2v_4step.py:model=tiny (consistency solver: fresh noise from the seed) on the converted directory:
  init_noise in both layouts, text_embeddings without negative_context (CFG off), save_latents."""
  d = files["dir"]

  def config(name, noise):
    c = lightx2v_4step.get_config("model=tiny")
    c.weights = resolve_dit(str(d / "raw" / "sf_ema.pt"), cache_dir=_cache_dir())
    c.vae, c.dtype, c.size, c.frames, c.timesteps = str(d / "vae"), "float32", SIZE, FRAMES, STEPS
    c.text_embeddings, c.init_noise, c.save_latents = str(d / "emb.npz"), str(d / noise), str(d / f"{name}.npy")
    c.output_dir, c.output_name, c.compilation_cache = str(d / "out"), name, ""
    return c

  a, side = _run(config("bi_a", "noise.npy"))
  b, _ = _run(config("bi_b", "noise5.npy"))
  assert a.shape == (1, C, F, H, W) and np.isfinite(a).all() and side["cfg"] is False
  np.testing.assert_array_equal(a, b)
  other, _ = _run(config("bi_c", "noise_b.npy"))
  assert max_rel_err(other, a) > 1e-3, "the injected init_noise must be used"
