"""Weight-only int8 / fp8 quantisation (`wanjax.quant`): round-trip error bounds, the quantised Dense and tiny-DiT
forwards against float32, quantised-file loading in the converter's format, sharding, and weight memory."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from converters.names import dit as dit_names
from tests.conftest import max_rel_err
from wanjax import checkpoint, lora, quant
from wanjax import sharding as shd
from wanjax.dit.config import get_config
from wanjax.dit.model import WanDiT, make_forward
from wanjax.errors import UsageError
from wanjax.nn import Dense

FP8_REL = 2.0 ** -4          # e4m3: 3 mantissa bits -> round-to-nearest relative error <= 2^-4 (normals)
FP8_SUB = 2.0 ** -10         # half the subnormal spacing 2^-9, in units of the channel scale
SLACK = 1e-6                 # float32 arithmetic in quantise/dequantise, relative to the bound's scale
# Tiny DiT (random weights, 3 layers) forward, relative to max|fp32 output|. Measured: int8 ~3e-3, fp8 ~2e-2.
TOL_DIT = {"int8": 1e-2, "fp8": 6e-2}


def _kernel(seed, shape=(24, 40)):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=shape) * rng.uniform(0.01, 3.0, size=shape[-1])   # per-channel spread of magnitudes
  w[:, 3] = 0.0                                                          # an all-zero channel
  return w.astype(np.float32)


def test_int8_round_trip_within_half_a_step():
  w = _kernel(0)
  q, scale = quant.quantize_int8(w)
  assert q.dtype == jnp.int8 and q.shape == w.shape and scale.dtype == jnp.float32 and scale.shape == (1, 40)
  s = np.asarray(scale)
  np.testing.assert_allclose(s[0], np.maximum(np.abs(w).max(0), quant.SCALE_FLOOR) / 127, rtol=3e-7)  # 1 ulp
  err = np.abs(np.asarray(quant.dequantize(q, scale)) - w)
  assert np.all(err <= s / 2 * (1 + SLACK)), float((err / s).max())
  assert np.all(np.abs(np.asarray(q)).max(0)[np.abs(w).max(0) > 0] == 127)   # absmax maps to ±127
  assert np.all(np.asarray(q)[:, 3] == 0)


def test_fp8_round_trip_relative_error():
  w = _kernel(1)
  q, scale = quant.quantize_fp8(w)
  assert q.dtype == jnp.float8_e4m3fn and scale.shape == (1, 40)
  s = np.asarray(scale)
  np.testing.assert_allclose(s[0], np.maximum(np.abs(w).max(0), quant.SCALE_FLOOR) / 448, rtol=3e-7)  # 1 ulp
  assert np.abs(np.asarray(q, np.float32)).max() <= 448
  err = np.abs(np.asarray(quant.dequantize(q, scale)) - w)
  bound = FP8_REL * np.abs(w) + FP8_SUB * s
  assert np.all(err <= bound * (1 + SLACK) + SLACK * s), float((err / bound).max())


def test_stacked_kernels_quantise_per_layer_and_channel():
  w = np.stack([_kernel(2), 5 * _kernel(3)])                # [L=2, in, out]
  q, scale = quant.quantize_int8(w)
  assert scale.shape == (2, 1, 40)
  for i in range(2):
    qi, si = quant.quantize_int8(w[i])
    np.testing.assert_array_equal(q[i], qi)
    np.testing.assert_array_equal(scale[i], si)


class _Two(nnx.Module):
  def __init__(self, rngs):
    self.a = Dense(24, 40, rngs=rngs)
    self.b = Dense(40, 18, axes=("mlp", "embed"), rngs=rngs)


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantised_dense_forward_within_bound(mode):
  m = _Two(nnx.Rngs(0))
  m.a.kernel[...] = jnp.asarray(_kernel(4))
  m.a.bias[...] = jnp.linspace(-1, 1, 40)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 7, 24)), jnp.float32)
  w = np.asarray(m.a.kernel[...], np.float64)
  y32 = np.asarray(m.a(x), np.float64)
  quant.quantize_model(m, mode, predicate=lambda path: path == ("a",))
  assert m.a.kernel[...].dtype == quant.QDTYPE[mode] and m.b.kernel[...].dtype == jnp.float32
  yq = np.asarray(m.a(x), np.float64)
  s = np.asarray(m.a.kernel_scale[...], np.float64)
  deq = np.asarray(m.a.kernel[...], np.float64) * s
  # Exact statement: the quantised layer is x @ dequantised(W) + b (float32 accumulation).
  ref_deq = np.einsum("bli,io->blo", np.asarray(x, np.float64), deq) + np.asarray(m.a.bias[...])
  assert max_rel_err(yq, ref_deq) <= 1e-6
  # Error vs float32: |Σ_i x_i (Ŵ - W)_io| <= Σ_i |x_i| |Ŵ - W|_io, elementwise.
  bound = np.einsum("bli,io->blo", np.abs(np.asarray(x, np.float64)), np.abs(deq - w))
  assert np.all(np.abs(yq - y32) <= bound + 1e-5 * np.abs(y32).max())
  if mode == "int8":  # and the a-priori int8 bound ||x||_1 · scale/2
    assert np.all(np.abs(yq - y32) <= np.abs(np.asarray(x)).sum(-1, keepdims=True) * s / 2 * (1 + 1e-5))
  # qmatmul is the same matmul on raw arrays.
  np.testing.assert_allclose(
      np.asarray(quant.qmatmul(x, m.a.kernel[...], m.a.kernel_scale[...], jnp.float32)) + np.asarray(m.a.bias[...]),
      yq, rtol=0, atol=1e-6 * np.abs(yq).max())


def _random_dit(seed=0):
  model = WanDiT(get_config("tiny"), rngs=nnx.Rngs(seed))
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)
  nnx.update(model, nnx.map_state(
      lambda p, v: v.replace(jnp.asarray(rng.normal(size=v.get_value().shape) * (0.3 if v.get_value().ndim < 3 else
                                         1 / np.sqrt(v.get_value().shape[-2])), jnp.float32)), state))
  return model


def _inputs():
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.normal(size=(2, 3, 4, 6, 16)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(2, 7, 20)), jnp.float32)
  return x, jnp.array([999.0, 250.0]), ctx


def _forward(model):
  forward, params, rest = make_forward(model)
  return np.asarray(jax.jit(forward)(params, rest, *_inputs()))


@pytest.fixture(scope="module")
def dit_ref():
  y = _forward(_random_dit())
  assert np.abs(y).max() > 0.1
  return y


@pytest.fixture(scope="module")
def quantised():
  """mode -> (quantised tiny DiT, its forward), built once."""
  cache = {}

  def get(mode):
    if mode not in cache:
      model = quant.quantize_model(_random_dit(), mode)
      cache[mode] = (model, _forward(model))
    return cache[mode]

  return get


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_quantised_tiny_dit_forward(mode, dit_ref, quantised):
  model, y = quantised(mode)
  state = nnx.state(model, nnx.Param)
  paths = quant.quantized_paths(state)
  assert paths == sorted([f"blocks.{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + [
      "blocks.ffn.fc1", "blocks.ffn.fc2"])
  for k, v in checkpoint.flat_params(state).items():
    want = quant.QDTYPE[mode] if k.endswith(".kernel") and k[:-len(".kernel")] in paths else jnp.float32
    assert v.get_value().dtype == want, k
  err = max_rel_err(y, dit_ref)
  print(f"tiny DiT {mode} forward: max rel err {err:.2e}")
  assert 0 < err <= TOL_DIT[mode]
  with pytest.raises(UsageError, match="quantised kernel blocks.self_attn.q.kernel"):
    d = np.ones((2, 24), np.float32)
    lora.merge_loras(state, [({"blocks.0.self_attn.q.lora_down.weight": d,
                               "blocks.0.self_attn.q.lora_up.weight": d.T}, 1.0)])


@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_load_quantised_file_in_converter_format(mode, quantised, tmp_path):
  """A file holding `<…>.kernel` int8/fp8 + `<…>.kernel_scale [1, out]` per layer (what `convert
  --keep-quantized` writes) loads into the abstract quantised model and reproduces the quantised forward."""
  cfg = get_config("tiny")
  model, y = quantised(mode)
  flat = checkpoint.flat_params(nnx.state(model, nnx.Param))
  tensors = {}
  for k, v in flat.items():
    a = np.asarray(v.get_value())
    if k.startswith("blocks."):
      tensors.update({f"blocks.{i}.{k[len('blocks.'):]}": a[i] for i in range(cfg.num_layers)})
    else:
      tensors[k] = a
  fmt = {"int8": "int8", "fp8": "float8_e4m3fn"}[mode]
  want = dit_names.file_shapes(cfg.to_json_dict() | {"quantization": {"format": fmt}})
  assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(v) for k, v in want.items()}
  path = str(tmp_path / "model.safetensors")
  checkpoint.save_tensors(path, tensors)
  abstract = nnx.eval_shape(lambda: quant.quantize_model(WanDiT(cfg, rngs=nnx.Rngs(0)), fmt))
  graphdef, abs_params, rest = nnx.split(abstract, nnx.Param, ...)
  loaded = nnx.merge(graphdef, checkpoint.load_state(abs_params, [path]), rest)
  for k, v in checkpoint.flat_params(nnx.state(loaded, nnx.Param)).items():
    np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(flat[k].get_value()), err_msg=k)
    assert v.get_value().dtype == flat[k].get_value().dtype, k
  reader = checkpoint.SafetensorsReader([path])
  assert quant.file_mode(reader.entries[k][1] for k in reader.keys()) == mode


def test_quantise_sharded_model_keeps_kernel_sharding(quantised):
  model = _random_dit()
  mesh = shd.make_mesh("fsdp=4,tensor=2")
  state = nnx.state(model, nnx.Param)
  sh = shd.state_shardings(state, mesh)
  nnx.update(model, jax.tree.map(lambda v, s: v.replace(jax.device_put(v.get_value(), s.get_value())), state, sh,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable)))
  before = model.blocks.ffn.fc1.kernel[...].sharding
  assert "tensor" in str(before.spec)
  quant.quantize_model(model, "int8")
  after = model.blocks.ffn.fc1.kernel[...]
  assert after.dtype == jnp.int8 and after.sharding.is_equivalent_to(before, after.ndim)
  ref = checkpoint.flat_params(nnx.state(quantised("int8")[0], nnx.Param))
  for k, v in checkpoint.flat_params(nnx.state(model, nnx.Param)).items():
    np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(ref[k].get_value()), err_msg=k)


def _t2v_14b_arithmetic():
  """Parameter counts of Wan2.1 T2V-14B from the spec key table (wan_model.md §2.2)."""
  d, f, n_layers = 5120, 13824, 40
  q_kernels = 8 * d * d + 2 * d * f                                # self/cross q,k,v,o + ffn.0/.2 weights
  q_scales = 8 * d + f + d                                         # one float32 per output channel
  other_block = (8 * d + f + d) + 4 * d + 2 * d + 6 * d            # biases, qk norms, norm3, modulation
  glob = (d * 16 * 4 + d) + (4096 * d + d + d * d + d) + (256 * d + d + d * d + d) + (6 * d * d + 6 * d) \
      + 2 * d + (d * 64 + 64)
  return n_layers * q_kernels, n_layers * q_scales, n_layers * other_block + glob


def test_weight_memory_t2v_14b():
  qk, qs, other = _t2v_14b_arithmetic()
  n = qk + other
  got = {m: quant.weight_memory(get_config("t2v_14b"), m) for m in ("float32", "bf16", "int8", "fp8")}
  for m, r in got.items():
    print(f"T2V-14B weights {m}: {r['total'] / 2**30:.2f} GiB ({r['params'] / 1e9:.3f} B params)")
    assert r["params"] == n
  assert got["float32"]["total"] == 4 * n
  assert got["bf16"]["total"] == 2 * n
  for m in ("int8", "fp8"):
    assert got[m]["total"] == qk + 4 * qs + 2 * other
    assert got[m]["quantized"] == qk + 4 * qs
  assert got["int8"]["total"] < 0.52 * got["bf16"]["total"]
  assert quant.weight_memory(get_config("t2v_14b"), "int8", rest="float32")["total"] == qk + 4 * qs + 4 * other
  with pytest.raises(UsageError, match="unknown weight mode 'int4'"):
    quant.weight_memory(get_config("t2v_14b"), "int4")


def test_mode_errors_and_file_mode():
  with pytest.raises(UsageError, match="unknown quantisation mode 'int4'"):
    quant.quantize(np.ones((2, 2), np.float32), "int4")
  assert quant.check_mode("float8_e4m3fn") == "fp8"
  assert quant.file_mode([np.float32, np.dtype(ml_dtypes.bfloat16)]) is None
  with pytest.raises(UsageError, match="mixes quantisation modes"):
    quant.file_mode([np.int8, ml_dtypes.float8_e4m3fn])
  with pytest.raises(UsageError, match="no Dense layer matches"):
    quant.quantize_model(_Two(nnx.Rngs(0)), "int8")
