"""Causal rollouts for DMD training (train/causal.py) against independent references (distillation.md §1.4, §3.4,
§10 "Rollout and gradient truncation"), plus the self_forcing / causvid_dmd / ODE-pair pipelines end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.causal.helpers import C, H, W, random_dit
from tests.conftest import max_rel_err
from train import causal, dmd
from train.state import ModelFn
from wanjax import sampling_ar
from wanjax.dit import kv_cache
from wanjax.dit.config import DiTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Two layers (fewer to compile), otherwise the tests/causal sizes: D 24, ffn 40, text_dim 20, 5 text rows, 4×6.
CFG = DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=2, text_dim=20, text_len=5, freq_dim=32)
STEPS = (1000, 750, 500, 250)
TIMESTEPS = dmd.warp_timesteps(STEPS, 5.0)          # (1000, 937.5, 833.33, 625)
GRID = dmd.SigmaGrid(5.0, "reference")
FPB, FRAMES, B = 3, 6, 1                            # two blocks of three latent frames
AR_TOL = 2e-5        # rollout vs ARSampler: same maths in another program order (fp32)
GRAD_TOL = 1e-4      # two-pass gradient vs the single-pass reference (fp32, summed over blocks)
SIGMA_CTX = 0.0049801                               # §0.3: sigma of t = 0 on the shift-5 grid


@pytest.fixture(scope="module")
def model_parts():
  model = random_dit(seed=5, cfg=CFG)
  fn, params = ModelFn.from_module(model)
  rng = np.random.default_rng(7)
  ctx = jnp.asarray(rng.standard_normal((B, CFG.text_len, CFG.text_dim)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((B, FRAMES, H, W, C)), jnp.float32)
  return model, fn, params, ctx, noise


def _rollout(fn, ctx, params, noise, key, j, *, mode="none", differentiable=True):
  return causal.causal_rollout(causal.Denoiser(fn, ctx), params, noise, key, j, timesteps=TIMESTEPS, gen_grid=GRID,
                               frames_per_block=FPB, context_noise_mode=mode, differentiable=differentiable)


# ------------------------------------------------------------------------------------------ vs inference

def test_rollout_equals_ar_sampler_with_injected_noise(model_parts):
  """For every exit j the rollout (both passes) equals inference run with the first j+1 steps on every block,
  the same re-noise draws and a clean context pass: so all blocks exit at the same step."""
  model, fn, params, ctx, noise = model_parts
  key = jax.random.PRNGKey(3)

  @jax.jit
  def both(params, j):
    return (_rollout(fn, ctx, params, noise, key, j, differentiable=False),
            _rollout(fn, ctx, params, noise, key, j))

  for j in range(len(STEPS)):
    sim, grad_pass = both(params, jnp.int32(j))
    opts = sampling_ar.AROptions(frames_per_block=FPB, steps=STEPS[:j + 1], shift=5.0, cache_frames=FRAMES)
    draws = causal.renoise_draws(key, FRAMES // FPB, j + 1, (B, FPB, H, W, C))
    ref = sampling_ar.generate(model, ctx, noise, opts, renoise=draws).latents
    print(f"exit {j}: rel err vs ARSampler {max_rel_err(sim, ref):.2e} (simulation), "
          f"{max_rel_err(grad_pass, ref):.2e} (gradient pass)")
    assert max_rel_err(sim, ref) < AR_TOL, j
    assert max_rel_err(grad_pass, ref) < AR_TOL, j
  # Different exits give different samples (the comparison above can fail).
  assert max_rel_err(both(params, jnp.int32(0))[0], both(params, jnp.int32(3))[0]) > 1e-2


# ------------------------------------------------------------------------------------------ gradient truncation

def _single_pass_reference(fn, ctx, params, noise, key, j, *, truncate=True):
  """Self-Forcing's loop written out (Python loops, one cache updated in order), stop-gradient where the
  reference has no_grad: steps before the exit, the exit input, the cache, the context pass."""
  sg = jax.lax.stop_gradient if truncate else (lambda a: a)
  module, frozen = fn.module(params), fn.module(sg(params))
  cache = kv_cache.cache_for(module, B, FRAMES, (H // 2) * (W // 2))
  ckv, ckv_frozen = kv_cache.prompt_kv(module, ctx), kv_cache.prompt_kv(frozen, ctx)
  ts = np.asarray(TIMESTEPS, np.float32)
  out = []
  for blk in range(FRAMES // FPB):
    x = noise[:, blk * FPB:(blk + 1) * FPB]
    start = blk * FPB
    for i in range(j):
      t = jnp.full((B,), ts[i])
      v, cache = kv_cache.cached_forward(frozen, cache, ckv_frozen, x, t, start)
      x0 = dmd.x0_from_v(x, v, t, GRID)
      s = GRID.sigma(jnp.float32(ts[i + 1]))
      x = (1 - s) * x0 + s * causal.renoise_draw(key, blk, i, x.shape)
    x, cache = sg(x), sg(cache)
    t = jnp.full((B,), ts[j])
    v, cache = kv_cache.cached_forward(module, cache, ckv, x, t, start)
    x0 = dmd.x0_from_v(x, v, t, GRID)
    out.append(x0)
    _, cache = kv_cache.cached_forward(frozen, cache, ckv_frozen, sg(x0), jnp.zeros((B,)), start)
  return jnp.concatenate(out, axis=1)


@pytest.mark.slow   # ~90 s of compiling on 2 shared CPUs; the stub test below checks the same truncation fast
def test_gradient_only_through_exit_steps(model_parts):
  _, fn, params, ctx, noise = model_parts
  key, j = jax.random.PRNGKey(4), 1
  weight = jnp.asarray(np.random.default_rng(9).standard_normal(noise.shape), jnp.float32)
  loss = lambda roll: lambda p: jnp.sum(weight * roll(p))  # noqa: E731
  got = jax.jit(jax.grad(loss(lambda p: _rollout(fn, ctx, p, noise, key, jnp.int32(j)))))(params)
  references = jax.jit(lambda p: (
      jax.grad(loss(lambda q: _single_pass_reference(fn, ctx, q, noise, key, j)))(p),
      jax.grad(loss(lambda q: _single_pass_reference(fn, ctx, q, noise, key, j, truncate=False)))(p)))
  ref, full = references(params)
  flat = lambda g: jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)])  # noqa: E731
  err = max_rel_err(flat(got), flat(ref))
  print(f"grad rel err vs single-pass reference: {err:.2e}; untruncated differs by "
        f"{max_rel_err(flat(full), flat(ref)):.2e}")
  assert err < GRAD_TOL, err
  # Without the truncation the gradient is different: the comparison is sensitive to it.
  assert max_rel_err(flat(full), flat(ref)) > 100 * GRAD_TOL


class _Stub:
  """A cache model whose every call is logged and whose parameters each reach the output by one route:
  wt[i] scales step i's call, wctx only the context pass (so only later blocks, through the cache), wc reads
  the cache, wq is the 'prompt K/V' (the exit step's cross-attention)."""

  def __init__(self, log):
    self.log = log         # None: no logging (ordered callbacks are not differentiated through scans)

  def prompt_kv(self, params):
    return params["wq"]

  def init_cache(self, params, batch, frames, height, width):
    return jnp.zeros((batch, frames, height, width, C), jnp.float32)

  def cached(self, params, cache, ckv, x, t, start):
    ts = jnp.asarray(TIMESTEPS, jnp.float32)
    is_ctx = t[0] == 0
    scale = jnp.where(is_ctx, params["wctx"], params["wt"][jnp.argmin(jnp.abs(ts - t[0]))])
    cache = jax.lax.dynamic_update_slice(cache, scale * x, (0, start, 0, 0, 0))
    visible = (jnp.arange(cache.shape[1]) < start + x.shape[1])[None, :, None, None, None]
    v = scale * x + params["wc"] * jnp.sum(jnp.where(visible, cache, 0), axis=1, keepdims=True) + ckv
    if self.log is not None:
      jax.debug.callback(lambda *a: self.log.append(tuple(np.asarray(u) for u in a)), t[0], start, x,
                         ordered=True)
    return v, cache


def test_stub_call_sequence_and_parameter_sensitivity():
  log = []
  stub = _Stub(log)
  params = {"wt": jnp.asarray([0.9, 0.8, 0.7, 0.6]), "wctx": jnp.float32(0.5), "wc": jnp.float32(0.3),
            "wq": jnp.float32(0.1)}
  noise = jax.random.normal(jax.random.PRNGKey(0), (2, 9, H, W, C))          # three blocks
  key = jax.random.PRNGKey(1)
  roll = lambda p, j, **kw: causal.causal_rollout(stub, p, noise, key, j, timesteps=TIMESTEPS,  # noqa: E731
                                                  gen_grid=GRID, frames_per_block=FPB, **kw)
  simulate = jax.jit(lambda p, j: roll(p, j, differentiable=False))
  grad = jax.jit(jax.grad(lambda p, j: jnp.sum(roll(p, j))))
  for j in range(4):
    log.clear()
    x0 = simulate(params, jnp.int32(j))
    jax.effects_barrier()
    calls = [(float(t), int(s)) for t, s, _ in log]
    want = [c for b in range(3) for c in [(TIMESTEPS[i], b * FPB) for i in range(j + 1)] + [(0.0, b * FPB)]]
    assert [(round(t, 3), s) for t, s in calls] == [(round(t, 3), s) for t, s in want], j
    # Reference context noise (§1.4 quirk): the pass sees (1 − σ) x0 + σ ε with σ = σ5(0) = 0.0049801.
    for b in range(3):
      x_ctx = log[(b + 1) * (j + 2) - 1][2]
      eps = (x_ctx - (1 - SIGMA_CTX) * np.asarray(x0[:, b * FPB:(b + 1) * FPB])) / SIGMA_CTX
      assert abs(eps.std() - 1) < 0.1 and abs(eps.mean()) < 0.1
    # Gradients: only the exit step's own weight, the cache read and the prompt K/V.
    stub.log = None
    g = grad(params, jnp.int32(j))
    stub.log = log
    wt = np.asarray(g["wt"])
    assert wt[j] != 0 and np.all(wt[np.arange(4) != j] == 0), (j, wt)
    assert float(g["wctx"]) == 0.0           # context passes reach the output only through later caches
    assert float(g["wc"]) != 0.0 and float(g["wq"]) != 0.0
  # "none" feeds the clean x0 to the context pass.
  log.clear()
  x0 = jax.jit(lambda p: roll(p, 3, differentiable=False, context_noise_mode="none"))(params)
  jax.effects_barrier()
  np.testing.assert_array_equal(log[4][2], np.asarray(x0[:, :FPB]))


class _BlockStub:
  """A cache model whose K/V write of block b is scaled by its own parameter wk[b] (b = start // FPB), so the
  gradient w.r.t. wk[0] of a loss on block 1 alone can only come from block 0's cached K/V."""

  def prompt_kv(self, params):
    return jnp.float32(0.0)

  def init_cache(self, params, batch, frames, height, width):
    return jnp.zeros((batch, frames, height, width, C), jnp.float32)

  def cached(self, params, cache, ckv, x, t, start):
    cache = jax.lax.dynamic_update_slice(cache, params["wk"][start // FPB] * x, (0, start, 0, 0, 0))
    visible = (jnp.arange(cache.shape[1]) < start + x.shape[1])[None, :, None, None, None]
    return params["a"] * x + 0.3 * jnp.sum(jnp.where(visible, cache, 0), axis=1, keepdims=True), cache


@pytest.mark.parametrize("j", [0, 2])
def test_no_gradient_through_earlier_blocks_cache_or_noise(j):
  """§10: the gradient of a loss on block 1 w.r.t. the K/V that block 0 left in the cache is zero (they enter as
  stop-gradient context), though they change block 1's value; and the noise input gets zero gradient."""
  params = {"a": jnp.float32(0.6), "wk": jnp.asarray([0.8, 0.5])}
  noise = jax.random.normal(jax.random.PRNGKey(2), (2, 2 * FPB, H, W, C))
  roll = lambda p, n: causal.causal_rollout(_BlockStub(), p, n, jax.random.PRNGKey(3), j,  # noqa: E731
                                            timesteps=TIMESTEPS, gen_grid=GRID, frames_per_block=FPB)
  block1 = jax.jit(lambda p, n: jnp.sum(roll(p, n)[:, FPB:]))
  gp, gn = jax.grad(block1, argnums=(0, 1))(params, noise)
  wk = np.asarray(gp["wk"])
  print(f"exit {j}: d(block-1 loss)/d wk = {wk}, max |d/d noise| = {float(jnp.max(jnp.abs(gn))):.1e}")
  assert wk[0] == 0.0 and wk[1] != 0.0 and float(gp["a"]) != 0.0
  assert float(jnp.max(jnp.abs(gn))) == 0.0
  # Block 0's cached K/V do reach block 1's value (so a zero gradient is the truncation, not a missing path).
  moved = block1({"a": params["a"], "wk": params["wk"].at[0].set(1.3)}, noise)
  assert abs(float(moved) - float(block1(params, noise))) > 1e-3 * abs(float(block1(params, noise)))


def test_ode_teacher_grid_values_at_the_kept_indices():
  """§10 "ODE timesteps": 48-step shift-8 Euler grid at [0, 12, 24, 36] and 50-step at [0, 36, 44]."""
  from train import make_ode_pairs as mop
  _, t48 = mop.teacher_grid("euler", 48, 8.0)
  np.testing.assert_allclose(t48[[0, 12, 24, 36]], [1000, 960, 888.889, 727.273], atol=1e-3)
  _, t50 = mop.teacher_grid("euler", 50, 8.0)
  np.testing.assert_allclose(t50[[0, 36, 44]], [1000, 756.757, 521.739], atol=1e-3)


# ------------------------------------------------------------------------------------------ CausVid

def test_noised_data_rollout_inputs():
  seen = {}

  class Parallel:
    def parallel(self, params, x, t, fpb):
      seen.update(x=x, t=t, fpb=fpb)
      return params * x

  lat = jax.random.normal(jax.random.PRNGKey(0), (4, 9, H, W, C))
  ts = (1000.0, 757.0, 522.0)
  g8 = dmd.SigmaGrid(8.0)
  counts = np.zeros(4)
  for s in range(12):
    out = causal.noised_data_rollout(Parallel(), jnp.float32(0.5), lat, jax.random.PRNGKey(s), None,
                                     timesteps=ts, gen_grid=g8, frames_per_block=FPB)
    t, x = np.asarray(seen["t"]), np.asarray(seen["x"])
    assert seen["fpb"] == FPB and t.shape == (4, 9)
    assert np.all(t.reshape(4, 3, FPB) == t.reshape(4, 3, FPB)[..., :1])    # one index per block
    for val, k in zip((1000.0, 757.0, 522.0, 0.0), range(4)):
      counts[k] += np.sum(t == val)
    clean = t == 0
    np.testing.assert_array_equal(x[clean], np.asarray(lat)[clean])        # t = 0 keeps the clean latent
    sig = np.asarray(g8.sigma(jnp.asarray(t)))[..., None, None, None]
    eps = (x - (1 - sig) * np.asarray(lat)) / np.where(sig > 0, sig, 1)
    assert abs(eps[~clean].std() - 1) < 0.1
    want = x - sig * 0.5 * x
    assert max_rel_err(out, want) < 1e-6
  assert counts.min() > 0 and counts.sum() == 12 * 4 * 9


# ------------------------------------------------------------------------------------------ ODE pairs (units)

def test_ode_pair_keep_indices_match_the_references():
  from train import make_ode_pairs as mop
  # SF script: 48 Euler steps at shift 8 keep [0, 12, 24, 36, 48] for warp([1000, 750, 500, 250]) at shift 8.
  sig, _ = mop.teacher_grid("euler", 48, 8.0)
  student = [t / 1000 for t in dmd.warp_timesteps(STEPS, 8.0)] + [0.0]
  assert mop.keep_indices(student, sig) == [0, 12, 24, 36, 48]
  # CausVid: 50 steps keep [0, 36, 44, 50] for [1000, 757, 522] (+ 0).
  sig, _ = mop.teacher_grid("euler", 50, 8.0)
  assert mop.keep_indices([1.0, 0.757, 0.522, 0.0], sig) == [0, 36, 44, 50]
  with pytest.raises(ValueError, match="not on the teacher"):
    mop.keep_indices([1.0, 0.9, 0.0], sig)


def test_ode_pairs_missing_text_encoder_fails_before_any_work(tmp_path):
  # A bad encoder path is named before the teacher is built or the output folder is made.
  from configs.train import toyworld_ode_init
  from train import make_ode_pairs as mop
  from wanjax.errors import UsageError
  c = toyworld_ode_init.get_config()
  c.data.random_contexts = 0
  (tmp_path / "p.txt").write_text("a red circle moves left")
  c.data.prompts = str(tmp_path / "p.txt")
  c.data.text_encoder, c.data.tokenizer = str(tmp_path / "nope"), str(tmp_path)
  with pytest.raises(UsageError, match=r"config\.data\.text_encoder=.*nope' does not exist"):
    mop.run(c, str(tmp_path / "pairs"))
  assert not (tmp_path / "pairs").exists()


# ------------------------------------------------------------------------------------------ pipelines (CLI)

def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run(module, config, *extra):
  cmd = [sys.executable, "-m", module, f"--config={os.path.join(ROOT, 'configs', 'train', config)}", *extra]
  r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def _final_state(workdir, step):
  import orbax.checkpoint as ocp
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "default"))
  return state, [np.asarray(a) for a in jax.tree.leaves(state)]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["self_forcing.py:smoke=True", "causvid_dmd.py:smoke=True"])
def test_causal_dmd_smoke_runs(tmp_path, config):
  w = str(tmp_path / "run")
  _run("train.distill", config, f"--workdir={w}")
  state, leaves = _final_state(w, 6)
  assert int(state["step"]) == 6
  assert all(np.all(np.isfinite(a)) for a in leaves if a.dtype.kind == "f")


@pytest.mark.slow
def test_ode_pairs_resume_and_train(tmp_path):
  from safetensors.numpy import load_file
  out = str(tmp_path / "pairs")
  args = ("ode_init.py:smoke=True", f"--output={out}", "--num_steps=8", "--samples_per_shard=3")
  _run("train.make_ode_pairs", *args)
  index = json.load(open(os.path.join(out, "ode_pairs.json")))
  assert [s["file"] for s in index["shards"]] == ["shard-00000.safetensors", "shard-00001.safetensors"]
  assert index["settings"]["kept_steps"] == [0, 2, 4, 6, 8]
  first = load_file(os.path.join(out, "shard-00001.safetensors"))
  assert first["latents"].shape == (1, 5, 3, 4, 6, 16) and first["latents"].dtype == np.float16
  # Trajectory sanity: slot 0 is the seeded noise (x_T), the last slot the teacher's final latent.
  noise = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), 3), (3, 4, 6, 16)))
  assert max_rel_err(first["latents"][0, 0], noise) < 1e-3
  # The random teacher moves (its head is drawn at random, not Wan's zeros): the last slot is not the noise.
  assert np.abs(first["latents"][0, -1].astype(np.float32) - first["latents"][0, 0]).mean() > 0.05
  # Interrupted after shard 0: the rerun writes shard 1 again, identically.
  index["shards"] = index["shards"][:1]
  json.dump(index, open(os.path.join(out, "ode_pairs.json"), "w"))
  os.unlink(os.path.join(out, "shard-00001.safetensors"))
  r = _run("train.make_ode_pairs", *args)
  assert "wrote 1 shard(s) of 2" in r.stdout
  again = load_file(os.path.join(out, "shard-00001.safetensors"))
  for k in first:
    np.testing.assert_array_equal(first[k], again[k], err_msg=k)
  # The ode_init trainer reads them.
  w = str(tmp_path / "ode")
  _run("train.distill", "ode_init.py:smoke=True", f"--workdir={w}", f"--config.data.trajectories={out}",
       "--config.total_steps=2", "--config.checkpoint_every=2")
  state, leaves = _final_state(w, 2)
  assert int(state["step"]) == 2 and all(np.all(np.isfinite(a)) for a in leaves if a.dtype.kind == "f")
