"""Spatial tiling bounds the VAE decode's working set: XLA's memory plan (`compiled.memory_analysis()`, compile
only, no weights) for the chunked decode with and without tiles.

Tiles run one after another in a `lax.scan` that adds each weighted tile into the output in place
(wanjax/vae/tiling.py), so the tiled program's scratch is about one tile's decode; were the tiles decoded
together (vmapped or unrolled), or their outputs stacked before blending, it would grow with the tile count.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from wanjax.vae import VAEConfig, WanVAE, decode_latent, tiling

# Distinct sizes; two latent frames so the chunk scan is part of the program.
CFG = VAEConfig(dim=8, z_dim=6, dim_mult=(1, 2, 3, 3), num_res_blocks=1)
LATENT = (1, 2, 24, 32, 6)        # -> video 5 x 192 x 256
TILE, OVERLAP = (8, 8), 2         # 4 x 5 = 20 tiles
# Measured on CPU (jax 0.10.2): untiled 33.4 MiB, tiled 2.91 MiB (11.5x less); one 8x8 tile alone 2.66 MiB.
# (With the tile outputs stacked and blended at the end, as before session 4, tiled was 7.5 MiB: 2.8x a tile.)
UNTILED_OVER_TILED = 8.0          # untiled temp / tiled temp at least this
ONE_TILE_FACTOR = 1.5             # tiled temp / one tile's temp at most this (20 tiles)


def _temp_bytes(latent_shape, **kw):
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanVAE(CFG, rngs=nnx.Rngs(0))))
  fn = jax.jit(lambda st, z: decode_latent(nnx.merge(graphdef, st), z, **kw))
  compiled = fn.lower(state, jax.ShapeDtypeStruct(latent_shape, jnp.float32)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.fixture(scope="module")
def temps():
  return dict(untiled=_temp_bytes(LATENT), tiled=_temp_bytes(LATENT, tile=TILE, overlap=OVERLAP),
              one_tile=_temp_bytes(LATENT[:2] + TILE + LATENT[-1:]))


def test_tiled_decode_needs_less_scratch_than_untiled(temps):
  assert temps["tiled"] * UNTILED_OVER_TILED <= temps["untiled"], temps


def test_tiles_are_decoded_one_at_a_time(temps):
  b, f, h, w, _ = LATENT
  n_tiles = len(tiling.tile_starts(h, TILE[0], OVERLAP)) * len(tiling.tile_starts(w, TILE[1], OVERLAP))
  assert n_tiles == 20
  assert temps["tiled"] <= ONE_TILE_FACTOR * temps["one_tile"], temps
