"""Wan VAE temporal chunking, tiling and input checks (no torch).

- The chunked form (frame 0, then `lax.scan` over 4-frame chunks / single latent frames with a feature cache)
  equals the full-sequence formulation of spec §4.5.
- The jitted per-chunk steps are traced once for several frame counts, and the VAE is causal: a shorter clip
  gives the leading frames of a longer one.
- Spatial tiling: exact blending mechanics, and the measured approximation error on a random-weight model.
- Frame counts that are not 4k+1 and sizes not divisible by 8 raise UsageError naming the value.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import max_rel_err
from wanjax.errors import UsageError
from wanjax.vae import VAEConfig, create_vae, tiling
from wanjax.vae import model as vae_model

CHUNK_TOL = 1e-5      # chunked vs full sequence, max|diff| / max|full| (measured ~4e-7 encode, ~2e-6 abs decode)
BF16_TOL = 5e-2      # bf16 policy vs float32 (measured on `tiny`: 4e-3 encode, 2e-2 decode)
CAUSAL_TOL = 1e-6     # T=5 vs the first frames of T=9: the same arithmetic
# Tiling is an approximation (zero padding at tile edges; the mid-block attention sees one tile). Measured on
# this random-weight model, one latent frame of 12x16, tile (8, 8), overlap 4 (32 pixels): mean |err| 0.020,
# max 0.20 (pixels in [-1, 1]). Bounds with ~1.5x headroom.
TILE, OVERLAP = (8, 8), 4
TILE_MEAN_TOL, TILE_MAX_TOL = 0.03, 0.3

# Distinct sizes: channels 8/16/24, z_dim 6 (2z = 12), one residual block per stage to keep compiles short;
# non-trivial normalisation constants.
CFG = VAEConfig(dim=8, z_dim=6, dim_mult=(1, 2, 3, 3), num_res_blocks=1,
                latents_mean=(-0.5, -0.3, 0.1, 0.2, 0.4, 0.6), latents_std=(0.5, 0.8, 1.1, 1.4, 1.7, 2.0))
H, W = 16, 24


@pytest.fixture(scope="module")
def vae():
  model = create_vae(CFG, seed=0)
  # Keep decoded pixels mostly inside [-1, 1] so the final clamp does not hide differences.
  model.decoder.head_conv.kernel[...] = model.decoder.head_conv.kernel[...] * 0.5
  return model


def _video(t, seed=0, h=H, w=W):
  return jax.random.uniform(jax.random.key(seed), (1, t, h, w, 3), minval=-1.0, maxval=1.0)


@pytest.fixture(scope="module")
def chunked9(vae):
  """Chunked encode of 9 frames and decode of the result, with the trace counts around the first calls."""
  jax.clear_caches()   # an empty trace cache: the first call must trace the chunk steps
  before = dict(vae_model.TRACE_COUNTS)
  video = _video(9, seed=1)
  z9 = vae.encode(video)
  x9 = vae.decode(z9)
  return video, z9, x9, before, dict(vae_model.TRACE_COUNTS)


def test_chunk_step_traced_once_and_causal(vae, chunked9):
  video, z9, x9, before, after_first = chunked9
  assert {k: after_first[k] - before[k] for k in before} == {"encode_chunk": 1, "decode_chunk": 1}
  z5 = vae.encode(video[:, :5])              # another frame count: only the scan length changes
  x5 = vae.decode(z9[:, :2])
  assert vae_model.TRACE_COUNTS == after_first
  # Causality: the first 5 frames give the first 2 latent frames, and back.
  assert max_rel_err(z5, z9[:, :2]) <= CAUSAL_TOL
  assert max_rel_err(x5, x9[:, :5]) <= CAUSAL_TOL


def test_chunked_equals_full_sequence(vae, chunked9):
  video, z9, x9, _, _ = chunked9
  assert z9.shape == (1, 3, H // 8, W // 8, CFG.z_dim)
  assert x9.shape == (1, 9, H, W, 3)
  assert max_rel_err(z9, vae.encode(video, chunked=False)) <= CHUNK_TOL
  x_full = vae.decode(z9, chunked=False)
  assert float(jnp.mean(jnp.abs(x_full) < 1.0)) > 0.9   # the comparison is not dominated by the clamp
  assert max_rel_err(x9, x_full) <= CHUNK_TOL


def test_single_frame(vae, chunked9):
  """T=1 (an image): no scan at all; causality gives the expected values."""
  video, z9, x9, _, _ = chunked9
  z1 = vae.encode(video[:, :1])
  assert z1.shape == (1, 1, H // 8, W // 8, CFG.z_dim)
  assert max_rel_err(z1, z9[:, :1]) <= CAUSAL_TOL
  x1 = vae.decode(z9[:, :1])
  assert x1.shape == (1, 1, H, W, 3)
  assert max_rel_err(x1, x9[:, :1]) <= CAUSAL_TOL


def test_tile_blending_is_exact_for_a_pointwise_decoder():
  """With a decoder that has no spatial context (pixel repeat ×8), tiles blend back to the untiled result."""
  z = jax.random.normal(jax.random.key(3), (1, 2, 11, 13, 3))
  up = lambda t: jnp.repeat(jnp.repeat(t, 8, axis=2), 8, axis=3)  # noqa: E731
  got = tiling.decode_tiled(up, z, (4, 6), 2, 8)
  np.testing.assert_allclose(np.asarray(got), np.asarray(up(z)), rtol=1e-6, atol=1e-6)
  assert tiling.tile_starts(11, 4, 2) == [0, 2, 4, 6, 7]
  assert tiling.tile_starts(13, 6, 2) == [0, 4, 7]
  assert tiling.tile_starts(5, 8, 2) == [0]


def test_tiled_decode_close_to_untiled(vae):
  z = jax.random.normal(jax.random.key(2), (1, 1, 12, 16, CFG.z_dim))   # one frame: no scan to compile
  full = vae.decode(z)
  tiled = vae.decode(z, tile=TILE, overlap=OVERLAP)
  assert tiled.shape == full.shape == (1, 1, 96, 128, 3)
  err = jnp.abs(tiled - full)
  assert float(err.mean()) <= TILE_MEAN_TOL and float(err.max()) <= TILE_MAX_TOL, (float(err.mean()),
                                                                                    float(err.max()))
  # A tile covering the whole latent is no tiling at all.
  assert tiling.check_tile((12, 40), OVERLAP, (12, 16)) is None


@pytest.mark.parametrize("frames, size, match", [
    (8, (16, 24), r"num_frames=8 must be 4k\+1 \(e.g. 5 or 9"),
    (10, (16, 24), r"num_frames=10 must be 4k\+1 \(e.g. 9 or 13"),
    (9, (12, 24), r"12×24 must both be divisible by 8"),
    (9, (16, 30), r"16×30 must both be divisible by 8"),
])
def test_bad_video_shape(vae, frames, size, match):
  with pytest.raises(UsageError, match=match):
    vae.encode(jnp.zeros((1, frames) + size + (3,)))


def test_bad_latent_and_tile(vae):
  with pytest.raises(UsageError, match=r"latent shape \(1, 3, 2, 3, 16\) must be \[B, F, h, w, 6\]"):
    vae.decode(jnp.zeros((1, 3, 2, 3, 16)))
  with pytest.raises(UsageError, match=r"video shape \(1, 9, 16, 24\) must be \[B, T, H, W, 3\]"):
    vae.encode(jnp.zeros((1, 9, 16, 24)))
  with pytest.raises(UsageError, match=r"tile=\(4, 4\) must be larger than overlap=4"):
    vae.decode(jnp.zeros((1, 1, 8, 8, 6)), tile=(4, 4), overlap=4)


@pytest.mark.slow
def test_bf16_policy_close_to_float32(vae):
  """bf16 convs/attention (fp32 accumulation and norms) vs the fp32 model with the same weights."""
  from flax import nnx
  from wanjax.vae import WanVAE
  graphdef_bf16, _ = nnx.split(nnx.eval_shape(lambda: WanVAE(CFG, policy="bf16", rngs=nnx.Rngs(0))))
  vae_bf16 = nnx.merge(graphdef_bf16, nnx.state(vae))
  video = _video(5, seed=5)
  z = vae.encode(video)
  assert max_rel_err(vae_bf16.encode(video), z) <= BF16_TOL
  assert max_rel_err(vae_bf16.decode(z), vae.decode(z)) <= BF16_TOL


def test_every_param_has_logical_axes(vae):
  from flax import nnx
  from wanjax import sharding as shd
  known = {name for name, _ in shd.RULES}
  for path, var in nnx.to_flat_state(nnx.state(vae, nnx.Param)):
    axes = var.get_metadata().get("axes")
    assert axes is not None and len(axes) == var.get_value().ndim, path
    assert set(a for a in axes if a is not None) <= known, (path, axes)
