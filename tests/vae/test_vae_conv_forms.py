"""The Wan VAE's alternative conv forms (`wanjax.vae.layers.conv3d_form` / `upsample_form`) compute the same
function as the default ones, in float32 to rounding, and really change the program:

- "fold2d": a causal 3-D conv with temporal taps > 1 as one 2-D conv over the taps stacked on the channel axis;
- "subpixel": nearest ×2 upsample + 3×3 conv as four 2×2 convs of the low-resolution input, interleaved.

`benchmarks/vae_decode.py --conv3d fold2d --upsample subpixel` times them on an accelerator.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jax_core

from tests.conftest import max_rel_err
from wanjax import precision
from wanjax.vae import VAEConfig, create_vae
from wanjax.vae import layers as vl

F32_TOL = 2e-6    # the same sums in another order, float32 (measured ~3e-7 per conv, ~1e-6 for a decode)
BF16_TOL = 2e-2   # bf16 forms against each other (kernel taps summed in float32, then rounded once)


def _forms(monkeypatch, conv3d="conv3d", upsample="repeat"):
  monkeypatch.setattr(vl, "conv3d_form", lambda: conv3d)
  monkeypatch.setattr(vl, "upsample_form", lambda: upsample)


def _conv3d(kernel, cin=6, cout=10, seed=0, policy="float32"):
  conv = vl.CausalConv3d(cin, cout, kernel, policy=precision.get_policy(policy), rngs=nnx.Rngs(seed))
  conv.bias.set_value(jax.random.normal(jax.random.key(seed + 1), (cout,)) * 0.3)
  return conv


@pytest.mark.parametrize("kernel", [3, (3, 1, 1)])
def test_fold2d_equals_conv3d(monkeypatch, kernel):
  conv = _conv3d(kernel)
  x = jax.random.normal(jax.random.key(2), (2, 5, 7, 9, 6))
  cache = jax.random.normal(jax.random.key(3), (2, 2, 7, 9, 6))
  want_full, (want_step, want_cache) = conv(x), conv.step(x, cache)
  _forms(monkeypatch, conv3d="fold2d")
  got_full, (got_step, got_cache) = conv(x), conv.step(x, cache)
  assert got_full.shape == want_full.shape == (2, 5, 7, 9, 10)
  assert max_rel_err(got_full, want_full) < F32_TOL
  assert max_rel_err(got_step, want_step) < F32_TOL
  np.testing.assert_array_equal(np.asarray(got_cache), np.asarray(want_cache))


def test_fold2d_leaves_temporal_strides_and_kernel_one_alone(monkeypatch):
  """The encoder's stride-2 time conv and the 1×1×1 shortcut keep their 3-D conv (nothing to fold)."""
  x = jax.random.normal(jax.random.key(4), (1, 5, 4, 4, 6))
  for conv in (_conv3d((3, 1, 1)), _conv3d(1)):
    conv.stride = (2, 1, 1) if conv.kernel.shape[0] == 3 else conv.stride
    if conv.kernel.shape[0] == 3:
      conv.pad_t = 0
    want = conv(x)
    _forms(monkeypatch, conv3d="fold2d")
    jaxpr = jax.make_jaxpr(conv)(x)
    ranks = [e.invars[0].aval.ndim for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert ranks == [5]
    np.testing.assert_array_equal(np.asarray(conv(x)), np.asarray(want))
    _forms(monkeypatch)


@pytest.mark.parametrize("policy,tol", [("float32", F32_TOL), ("bf16", BF16_TOL)])
def test_subpixel_upsample_equals_repeat_then_conv(policy, tol):
  conv = vl.Conv2d(6, 4, 3, policy=precision.get_policy(policy), rngs=nnx.Rngs(5))
  conv.bias.set_value(jax.random.normal(jax.random.key(6), (4,)) * 0.3)
  x = jax.random.normal(jax.random.key(7), (2, 3, 5, 7, 6))
  want = conv(jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3))
  got = conv.upsample2x(x)
  assert got.shape == want.shape == (2, 3, 10, 14, 4) and got.dtype == want.dtype
  assert max_rel_err(got.astype(jnp.float32), want.astype(jnp.float32)) < tol


CFG = VAEConfig(dim=8, z_dim=4, dim_mult=(1, 2, 3, 3), num_res_blocks=1)


def _conv_kernels(fn, *args):
  """(lhs rank, kernel spatial shape) of every conv in `fn`'s program. The trace caches are cleared first: the
  VAE's jitted inner functions would otherwise return the jaxpr traced under the other form."""
  jax.clear_caches()
  jaxpr = jax.make_jaxpr(fn)(*args)
  out = []

  def walk(jx):
    for e in jx.eqns:
      if e.primitive.name == "conv_general_dilated":
        out.append((e.invars[0].aval.ndim, tuple(e.invars[1].aval.shape[:-2])))
      for sub in jax_core.jaxprs_in_params(e.params):
        walk(sub)
  walk(jaxpr.jaxpr)
  return out


def test_decode_with_both_forms_matches_the_default(monkeypatch):
  vae = create_vae(CFG, seed=0)
  graphdef, state = nnx.split(vae)
  z = jax.random.normal(jax.random.key(8), (1, 3, 4, 6, CFG.z_dim))

  def decode(st, z):   # not jitted: a patched form is read at trace time, and nothing is cached between forms
    return nnx.merge(graphdef, st).decode(z, chunked=False)

  with jax.disable_jit():
    want = decode(state, z)
  default = _conv_kernels(decode, state, z)
  _forms(monkeypatch, conv3d="fold2d", upsample="subpixel")
  with jax.disable_jit():
    got = decode(state, z)
  forms = _conv_kernels(decode, state, z)
  assert got.shape == want.shape == (1, 9, 32, 48, 3)
  assert max_rel_err(got, want) < 1e-5
  # The programs differ as claimed: no 3-D conv with temporal taps is left, and the upsample convs are 2×2.
  assert any(rank == 5 and k[0] == 3 for rank, k in default)
  assert not any(rank == 5 and k[0] == 3 for rank, k in forms)
  assert (4, (2, 2)) in forms and (4, (2, 2)) not in default
