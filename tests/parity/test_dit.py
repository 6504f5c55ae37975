"""WanDiT vs diffusers `WanTransformer3DModel` (random weights, every parameter randomised), plus JAX-only checks
of the per-frame timestep, scan/loop, block-causal mask and sinusoid paths.

Weights go through the real converter path: diffusers state dict -> `converters/names/dit.py` TABLE ->
JAX-layout safetensors -> `wanjax.checkpoint.load_state`.
"""

import copy
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from converters import engine, table
from converters.names import dit as dit_names
from converters.reader import DictSource
from tests.conftest import max_rel_err
from wanjax import checkpoint
from wanjax import sharding as shd
from wanjax.dit import layers, rope
from wanjax.dit.config import DiTConfig
from wanjax.dit.attention import block_causal_mask
from wanjax.dit.model import WanDiT, abstract_model, make_forward

TOL_FP32 = 1e-5          # max|jax - ref| <= TOL · max|ref| (task spec)
TOL_SAME_MATH = 1e-6     # two JAX paths that compute the same maths (per-frame t, scan vs loop, masks)
TOL_SINUSOID = 1e-6      # vs float64 sinusoid (absolute; values in [-1, 1])

# Mutually different sizes: D = 24 (2 heads × 12), ffn 40, text_dim 20, image_dim 18, F=3, H=4, W=6.
T2V = DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=3, text_dim=20, freq_dim=32)
I2V = DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=2, text_dim=20, freq_dim=32, model_type="i2v",
                in_dim=36, image_dim=18)
B, F, H, W = 2, 3, 4, 6
TIMESTEPS = ((999, 500), (1, 0), (371.25, 999.9))
TEXT_LEN_I2V = 512      # diffusers' I2V cross-attention hard-codes 512 text rows (image rows = S - 512)


# ------------------------------------------------------------------------------------------ helpers


def _torch():
  return pytest.importorskip("torch")


def _diffusers_model(cfg: DiTConfig, seed: int):
  """Diffusers model with every parameter randomised, its timestep sinusoid switched to the reference's
  float64 evaluation."""
  torch = _torch()
  tw = pytest.importorskip("diffusers.models.transformers.transformer_wan")
  torch.manual_seed(seed)
  kw = {}
  if cfg.has_image_input:
    kw = dict(image_dim=cfg.image_dim, added_kv_proj_dim=cfg.dim)
  m = tw.WanTransformer3DModel(
      patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
      in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
      ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, eps=cfg.eps, **kw).eval()
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in m.named_parameters():
      r = torch.randn(p.shape, generator=g, dtype=torch.float64)
      if p.ndim >= 2 and "scale_shift_table" not in name and "pos_embed" not in name:
        r = r / math.sqrt(math.prod(p.shape[1:]))          # Linear / Conv3d weight: unit-ish activations
      elif name.endswith("weight"):
        r = 1.0 + 0.3 * r                                  # norm scales around 1
      else:
        r = 0.3 * r                                        # biases, modulation tables
      p.copy_(r.to(p.dtype))

  class Float64Sinusoid(torch.nn.Module):
    # Quirk (§1.5): the reference evaluates the sinusoid in float64; diffusers in float32 (~1e-4 off at t=999).
    def forward(self, t):
      half = cfg.freq_dim // 2
      omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
      a = t.to(torch.float64)[:, None] * omega[None]
      return torch.cat([torch.cos(a), torch.sin(a)], dim=-1).float()

  m.condition_embedder.timesteps_proj = Float64Sinusoid()
  return m


def _load_jax(tmp_path, torch_model, cfg: DiTConfig, **model_kwargs):
  """Converts the diffusers state dict through the DiT name table and loads it into a WanDiT."""
  sd = {k: v.detach().float() for k, v in torch_model.state_dict().items()}
  steps = table.expand(dit_names.TABLE, "diffusers", num_layers=cfg.num_layers, tags=dit_names.tags(cfg))
  arrays = engine.to_arrays(DictSource(sd), steps, ignore=dit_names.IGNORE["diffusers"],
                            expected=dit_names.file_shapes(cfg))
  path = str(tmp_path / f"dit_{cfg.model_type}.safetensors")
  checkpoint.save_tensors(path, arrays)
  abstract = abstract_model(cfg, **model_kwargs)
  graphdef, abstract_state = nnx.split(abstract)
  state = checkpoint.load_state(abstract_state, [path])
  return graphdef, state


def _inputs(cfg: DiTConfig, seed: int, text_rows: int):
  """Latent, text with two real lengths zero-padded to `text_rows`, and I2V conditioning."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((B, F, H, W, 16)).astype(np.float32)
  ctx = np.zeros((B, text_rows, cfg.text_dim), np.float32)
  for i, n in enumerate((3, 6)):
    ctx[i, :n] = rng.standard_normal((n, cfg.text_dim))
  extra = {}
  if cfg.has_image_input:
    mask = np.zeros((B, F, H, W, 4), np.float32)
    mask[:, 0] = 1.0
    cond = rng.standard_normal((B, F, H, W, 16)).astype(np.float32)
    extra["y"] = np.concatenate([mask, cond], axis=-1)
    extra["clip_fea"] = rng.standard_normal((B, cfg.num_image_tokens, cfg.image_dim)).astype(np.float32)
  return x, ctx, extra


def _torch_forward(torch_model, x, t, ctx, extra, autocast=False, dtype=None):
  """Diffusers forward on channels-last inputs (cast to `dtype` if given); returns channels-last float64."""
  torch = _torch()
  hs = np.concatenate([x, extra["y"]], axis=-1) if "y" in extra else x
  hs = torch.from_numpy(np.ascontiguousarray(hs.transpose(0, 4, 1, 2, 3)))
  ctx = torch.from_numpy(ctx)
  kw = {}
  if "clip_fea" in extra:
    kw["encoder_hidden_states_image"] = torch.from_numpy(extra["clip_fea"])
  if dtype is not None:
    hs, ctx, kw = hs.to(dtype), ctx.to(dtype), {k: v.to(dtype) for k, v in kw.items()}
  t = torch.as_tensor(np.asarray(t))
  with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
    out = torch_model(hs, t, ctx, return_dict=False, **kw)[0]
  return out.float().numpy().astype(np.float64).transpose(0, 2, 3, 4, 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "frames_per_block"))
def _apply(graphdef, state, x, t, ctx, extra, frames_per_block):
  return nnx.merge(graphdef, state)(x, t, ctx, frames_per_block=frames_per_block, **extra)


def _jax_forward(graphdef, state, x, t, ctx, extra, frames_per_block=None):
  """One jitted program per (graphdef, shapes, dtypes), shared by every test of this file."""
  out = _apply(graphdef, state, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx),
               {k: jnp.asarray(v) for k, v in extra.items()}, frames_per_block)
  assert out.dtype == jnp.float32
  return np.asarray(out, np.float64)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
  _torch()
  tm = _diffusers_model(T2V, seed=0)
  graphdef, state = _load_jax(tmp_path_factory.mktemp("t2v"), tm, T2V)
  return tm, graphdef, state


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
  _torch()
  tm = _diffusers_model(I2V, seed=1)
  graphdef, state = _load_jax(tmp_path_factory.mktemp("i2v"), tm, I2V)
  return tm, graphdef, state


# ------------------------------------------------------------------------------------------ parity (torch)


@pytest.mark.torch
@pytest.mark.parametrize("ts", TIMESTEPS)
def test_t2v_matches_diffusers(t2v, ts):
  tm, graphdef, state = t2v
  x, ctx, extra = _inputs(T2V, seed=10, text_rows=8)
  t_ref = np.asarray(ts, np.float32 if any(isinstance(v, float) for v in ts) else np.int64)
  ref = _torch_forward(tm, x, t_ref, ctx, extra)
  # float32 t here (one compiled program for all cases); integer t goes through the JAX model in
  # test_loop_equals_scan.
  out = _jax_forward(graphdef, state, x, np.asarray(ts, np.float32), ctx, extra)
  err = max_rel_err(out, ref)
  assert err <= TOL_FP32, f"t={ts}: max rel err {err:.3g} > {TOL_FP32} (max|ref| {np.abs(ref).max():.3g})"


@pytest.mark.torch
@pytest.mark.parametrize("ts", TIMESTEPS[:2])
def test_i2v_matches_diffusers(i2v, ts):
  tm, graphdef, state = i2v
  x, ctx, extra = _inputs(I2V, seed=11, text_rows=TEXT_LEN_I2V)
  ref = _torch_forward(tm, x, np.asarray(ts, np.int64), ctx, extra)
  out = _jax_forward(graphdef, state, x, np.asarray(ts, np.float32), ctx, extra)
  err = max_rel_err(out, ref)
  assert err <= TOL_FP32, f"t={ts}: max rel err {err:.3g} > {TOL_FP32} (max|ref| {np.abs(ref).max():.3g})"


@pytest.mark.torch
def test_per_frame_timesteps_match_diffusers_per_token(t2v):
  """Different t per latent frame == diffusers' per-token timestep path with each frame's t on its tokens."""
  tm, graphdef, state = t2v
  x, ctx, extra = _inputs(T2V, seed=12, text_rows=8)
  t = np.array([[999, 750, 500], [10, 400, 900]], np.float32)               # [B, F]
  tokens_per_frame = (H // 2) * (W // 2)
  ref = _torch_forward(tm, x, np.repeat(t, tokens_per_frame, axis=1), ctx, extra)
  out = _jax_forward(graphdef, state, x, t, ctx, extra)
  err = max_rel_err(out, ref)
  assert err <= TOL_FP32, f"per-frame t: max rel err {err:.3g} > {TOL_FP32}"


@pytest.mark.torch
def test_bf16_error_no_worse_than_diffusers_bf16(t2v):
  """bf16 policy vs the fp32 reference: error no worse than the better of diffusers under CPU bf16 autocast and
  diffusers cast to bf16, each vs diffusers fp32. Measured (CPU): jax bf16 4.4e-3; diffusers autocast 1.2e-2,
  diffusers .to(bf16) 8.2e-3."""
  torch = _torch()
  tm, graphdef, state = t2v
  x, ctx, extra = _inputs(T2V, seed=13, text_rows=8)
  t = np.array([999, 500], np.int64)
  ref = _torch_forward(tm, x, t, ctx, extra)
  err_autocast = max_rel_err(_torch_forward(tm, x, t, ctx, extra, autocast=True), ref)
  err_cast = max_rel_err(_torch_forward(copy.deepcopy(tm).to(torch.bfloat16), x, t, ctx, extra,
                                        dtype=torch.bfloat16), ref)
  # Through make_forward, the helper samplers and trainers use.
  fwd, params, rest = make_forward(nnx.merge(nnx.graphdef(abstract_model(T2V, policy="bf16")), state))
  out = jax.jit(fwd)(params, rest, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx))
  assert out.dtype == jnp.float32
  err_jax = max_rel_err(np.asarray(out, np.float64), ref)
  msg = (f"bf16 policy rel err {err_jax:.3g}; diffusers bf16-autocast {err_autocast:.3g}, diffusers .to(bf16) "
         f"{err_cast:.3g} (all vs diffusers fp32)")
  assert err_jax <= min(err_autocast, err_cast), msg
  assert err_jax > 1e-5, "bf16 policy matches fp32 to fp32 accuracy: the compute dtype is not applied; " + msg


# ------------------------------------------------------------------------------------------ JAX-only paths


@pytest.fixture(scope="module")
def tiny_state():
  """The T2V test model (same graphdef, so compiled programs are shared) with random values everywhere,
  including the zero-initialised head."""
  graphdef, abstract = nnx.split(abstract_model(T2V))
  rng = np.random.default_rng(5)
  state = jax.tree.map(lambda a: np.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), abstract)
  # Placed like checkpoint.load_state places the converted weights, so the compiled programs are reused.
  mesh = shd.make_mesh("", jax.devices()[:1])
  return graphdef, jax.device_put(state, shd.state_shardings(abstract, mesh))


def test_scalar_t_equals_per_frame_broadcast(tiny_state):
  graphdef, state = tiny_state
  x, ctx, extra = _inputs(T2V, seed=12, text_rows=8)
  t = np.array([999, 371.5], np.float32)
  a = _jax_forward(graphdef, state, x, t, ctx, extra)
  b = _jax_forward(graphdef, state, x, np.repeat(t[:, None], F, axis=1), ctx, extra)
  assert np.abs(a).max() > 0
  assert max_rel_err(b, a) <= TOL_SAME_MATH


def test_loop_equals_scan(tiny_state):
  """scan=False (Python loop over the stacked params) == scan=True; integer t == the same float t."""
  graphdef, state = tiny_state
  x, ctx, extra = _inputs(T2V, seed=12, text_rows=8)
  a = _jax_forward(graphdef, state, x, np.array([500, 20], np.float32), ctx, extra)
  loop_graphdef = nnx.graphdef(abstract_model(T2V, scan=False))
  b = _jax_forward(loop_graphdef, state, x, np.array([500, 20], np.int32), ctx, extra)
  assert max_rel_err(b, a) <= TOL_SAME_MATH


@pytest.mark.parametrize("unroll", [2, 3])
def test_scan_unroll_equals_scan(tiny_state, unroll):
  """scan_unroll (layers per iteration of the scanned loop; 3 = all of T2V's) keeps the forward."""
  graphdef, state = tiny_state
  x, ctx, extra = _inputs(T2V, seed=13, text_rows=8)
  t = np.array([640, 7], np.float32)
  a = _jax_forward(graphdef, state, x, t, ctx, extra)
  b = _jax_forward(nnx.graphdef(abstract_model(T2V, scan_unroll=unroll)), state, x, t, ctx, extra)
  assert np.abs(a).max() > 0
  assert max_rel_err(b, a) <= TOL_SAME_MATH


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_scan_unroll_must_be_a_positive_int(bad):
  from wanjax.errors import UsageError
  with pytest.raises(UsageError, match=r"scan_unroll=.* must be an int >= 1"):
    abstract_model(T2V, scan_unroll=bad)


@pytest.mark.slow
def test_remat_keeps_values_and_gradients(tiny_state):
  graphdef, state = tiny_state
  x, ctx, _ = _inputs(T2V, seed=22, text_rows=8)
  t = jnp.array([700.0, 30.0])

  @functools.partial(jax.jit, static_argnums=1)
  def loss_and_grad(params, gd):
    return jax.value_and_grad(lambda p: jnp.mean(nnx.merge(gd, p)(jnp.asarray(x), t, jnp.asarray(ctx)) ** 2))(
        params)

  l0, g0 = loss_and_grad(state, graphdef)
  k0 = np.asarray(g0["blocks"]["ffn"]["fc1"]["kernel"][...])
  assert np.abs(k0).max() > 0
  for remat in ("full", "dots"):
    l1, g1 = loss_and_grad(state, nnx.graphdef(abstract_model(T2V, remat=remat)))
    assert abs(float(l1) - float(l0)) <= TOL_SAME_MATH * abs(float(l0)), remat
    assert max_rel_err(np.asarray(g1["blocks"]["ffn"]["fc1"]["kernel"][...]), k0) <= 1e-5, remat


def test_block_causal_mask_is_causal_across_blocks(tiny_state):
  """With blocks of 2 frames, the first block's output equals a forward on those 2 frames alone (same RoPE
  positions, attention restricted to the block); the last frame still sees the first block."""
  graphdef, state = tiny_state
  x, ctx, extra = _inputs(T2V, seed=12, text_rows=8)
  t = np.array([999, 371.5], np.float32)
  full = _jax_forward(graphdef, state, x, t, ctx, extra, frames_per_block=2)
  first = _jax_forward(graphdef, state, x[:, :2], t, ctx, extra)
  assert max_rel_err(full[:, :2], first) <= TOL_SAME_MATH
  bidir = _jax_forward(graphdef, state, x, t, ctx, extra)
  assert max_rel_err(full[:, 2:], bidir[:, 2:]) > 1e-3
  assert max_rel_err(full[:, :2], bidir[:, :2]) > 1e-3
  # One block covering every frame is the bidirectional mask.
  assert bool(jnp.all(block_causal_mask(F, 6, F)))
  m = np.asarray(block_causal_mask(3, 2, 2))
  assert m.tolist() == [[True] * 4 + [False] * 2] * 4 + [[True] * 6] * 2


def test_sinusoid_matches_float64():
  t = np.array([0, 1, 1.5, 371.25, 500, 999, 999.9, 1000, 3008, 12345.5], np.float32)
  got = np.asarray(layers.sinusoid(jnp.asarray(t), 256), np.float64)
  half = 128
  a = t.astype(np.float64)[:, None] * np.power(10000.0, -np.arange(half) / half)[None]
  want = np.concatenate([np.cos(a), np.sin(a)], axis=-1)
  assert np.abs(got - want).max() <= TOL_SINUSOID


def test_rope_frame_offset_is_a_shift_of_the_table():
  k, grid = 24, (5, 2, 3)
  table = jax.jit(rope.rope_cos_sin, static_argnums=(0, 1))
  cos, sin = table(k, grid, 0)
  cos2, sin2 = table(k, (3, 2, 3), jnp.int32(2))      # a traced offset, as a KV-cache step passes it
  tokens_per_frame = grid[1] * grid[2]
  np.testing.assert_array_equal(np.asarray(cos2), np.asarray(cos)[2 * tokens_per_frame:])
  np.testing.assert_array_equal(np.asarray(sin2), np.asarray(sin)[2 * tokens_per_frame:])


def test_rope_head_dim_128_matches_float64_spec():
  """wan_model.md §8.4 at the real head dim (the tiny models have K = 12, where the three axes coincide): 22/21/21
  pairs with exponents 2j/44 (t) and 2j/42 (h, w), interleaved pairs rotated as complex numbers, positions up
  to ~1000 frames (KV-cache offsets) accurate as if computed in float64."""
  k, grid, offset = 128, (3, 5, 7), 997
  assert rope.axis_dims(k) == (44, 42, 42)
  cos, sin = jax.jit(rope.rope_cos_sin, static_argnums=(0, 1))(k, grid, jnp.int32(offset))
  f, h, w = np.meshgrid(np.arange(grid[0]) + offset, np.arange(grid[1]), np.arange(grid[2]), indexing="ij")
  om = lambda d: 10000.0 ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # noqa: E731
  ang = np.concatenate([f.reshape(-1, 1) * om(44), h.reshape(-1, 1) * om(42), w.reshape(-1, 1) * om(42)], axis=1)
  assert ang.shape == (105, 64)
  assert np.abs(np.asarray(cos, np.float64) - np.cos(ang)).max() <= TOL_SINUSOID
  assert np.abs(np.asarray(sin, np.float64) - np.sin(ang)).max() <= TOL_SINUSOID
  x = np.random.default_rng(3).standard_normal((1, 105, 2, k)).astype(np.float32)
  got = np.asarray(rope.apply_rope(jnp.asarray(x), cos, sin), np.float64)
  z = (x[..., 0::2] + 1j * x[..., 1::2].astype(np.float64)) * np.exp(1j * ang)[None, :, None, :]
  want = np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
  assert max_rel_err(got, want) <= TOL_FP32


def test_cached_cross_kv_equals_recomputed(tiny_state):
  """`cross_kv` once per prompt + `blocks_forward(cross_kv=...)` is the plain forward (the KV-cache hook)."""
  graphdef, state = tiny_state
  x, ctx, extra = _inputs(T2V, seed=12, text_rows=8)
  t = np.array([999, 371.5], np.float32)

  @jax.jit
  def cached(state, x, t, ctx):
    m = nnx.merge(graphdef, state)
    emb = m.embed(x, t, ctx)
    kv = m.cross_kv(emb.context)
    assert kv.k.shape == (T2V.num_layers, B, 8, T2V.num_heads, T2V.head_dim)
    cos, sin = m.rope(emb.grid)
    h = m.blocks_forward(emb.tokens, emb.e0, None, None, cos, sin, cross_kv=kv)
    return m.head_forward(h, emb.e, emb.grid)

  out = np.asarray(cached(state, jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx)), np.float64)
  assert max_rel_err(out, _jax_forward(graphdef, state, x, t, ctx, extra)) <= TOL_SAME_MATH


def test_guidance_embedding_starts_as_identity():
  """Zero-initialised guidance output: a fresh CFG-distilled student reproduces the teacher's time path;
  once trained (non-zero fc2) guidance changes it (post_training.md A.2)."""
  cfg = DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=1, text_dim=20, freq_dim=32, guidance_embed=True)
  model = nnx.jit(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))()
  embed = nnx.jit(lambda m, t, g: (m.time_embed(t), m.time_embed(t, guidance=g)))
  t, g = jnp.array([999.0, 10.0]), jnp.array([3000.0, 5000.0])
  (e, _), (eg, _) = embed(model, t, g)
  np.testing.assert_array_equal(np.asarray(eg), np.asarray(e))
  model.guidance_embedding.fc2.kernel[...] = jnp.ones_like(model.guidance_embedding.fc2.kernel[...])
  (e, _), (eg, e0g) = embed(model, t, g)
  assert eg.shape == e.shape == (2, 1, 24) and e0g.shape == (2, 1, 6, 24)
  assert float(jnp.abs(eg - e).max()) > 1e-3
