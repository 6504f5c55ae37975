"""`wanjax.nn.cast_kernels`: the bf16 matmuls' float32 kernels stored in bf16 for inference. The DiT's outputs must
not change by a single bit (those kernels were cast at use before), the float32-path layers, biases, norms and
quantised kernels must stay as they are, and a sharded kernel must keep its sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wanjax import quant as quantlib
from wanjax import sharding as shd
from wanjax.dit.config import PRESETS
from wanjax.dit.model import WanDiT, make_forward
from wanjax.nn import cast_kernels

B, F, H, W, S = 1, 3, 4, 6, 7


def _model(policy, name="tiny", seed=0):
  cfg = PRESETS[name]
  model = WanDiT(cfg, policy=policy, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(seed)   # random values everywhere (the zero-initialised head too)
  state = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), nnx.state(model))
  nnx.update(model, state)
  return cfg, model


def _inputs(cfg):
  rng = np.random.default_rng(1)
  return (rng.standard_normal((B, F, H, W, 16)).astype(np.float32), np.array([750.0], np.float32),
          rng.standard_normal((B, S, cfg.text_dim)).astype(np.float32))


def _dtypes(model):
  return {".".join(map(str, p)): v.get_value().dtype for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _forward(model, args, **kw):
  fwd, params, rest = make_forward(model)
  return np.asarray(jax.jit(lambda p, r: fwd(p, r, *args, **kw))(params, rest))


def _param_bytes(model):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", ["tiny", "tiny_i2v"])
def test_bf16_policy_outputs_are_bit_identical_and_kernels_halve(name):
  cfg, model = _model("bf16", name)
  args, kw = _inputs(cfg), {}
  if cfg.has_image_input:
    rng = np.random.default_rng(2)
    kw = dict(y=rng.standard_normal((B, F, H, W, 20)).astype(np.float32),
              clip_fea=rng.standard_normal((B, cfg.num_image_tokens, cfg.image_dim)).astype(np.float32))
  before = _forward(model, args, **kw)
  bytes_before = _param_bytes(model)
  saved = cast_kernels(model)
  assert saved > 0 and _param_bytes(model) == bytes_before - saved
  dtypes = _dtypes(model)
  half = sorted(k for k, d in dtypes.items() if d == jnp.bfloat16)
  # Every block matmul, the text embedding and the patch embedding are bf16 now ...
  for k in ("blocks.self_attn.q.kernel", "blocks.self_attn.o.kernel", "blocks.cross_attn.k.kernel",
            "blocks.ffn.fc1.kernel", "blocks.ffn.fc2.kernel", "text_embedding.fc1.kernel",
            "patch_embedding.kernel"):
    assert dtypes[k] == jnp.bfloat16, k
  # ... and nothing else: float32-path layers, biases and norms keep float32.
  assert all(k.endswith(".kernel") for k in half), half
  for k in ("time_embedding.fc1.kernel", "time_projection.fc.kernel", "head.head.kernel",
            "blocks.self_attn.q.bias", "blocks.norm3.scale", "blocks.modulation"):
    assert dtypes[k] == jnp.float32, k
  np.testing.assert_array_equal(_forward(model, args, **kw), before)
  assert cast_kernels(model) == 0   # idempotent


def test_float32_policy_and_quantised_kernels_are_left_alone():
  cfg, model = _model("float32")
  before = _dtypes(model)
  assert cast_kernels(model) == 0 and _dtypes(model) == before
  cfg, model = _model("bf16")
  quantlib.quantize_model(model, "int8")
  args = _inputs(cfg)
  want = _forward(model, args)
  cast_kernels(model)
  dtypes = _dtypes(model)
  assert dtypes["blocks.ffn.fc1.kernel"] == jnp.int8 and dtypes["blocks.ffn.fc1.kernel_scale"] == jnp.float32
  assert dtypes["text_embedding.fc1.kernel"] == jnp.bfloat16   # not quantised, so cast
  np.testing.assert_array_equal(_forward(model, args), want)


def test_sharded_kernels_keep_their_sharding():
  cfg, model = _model("bf16")
  args = _inputs(cfg)
  mesh = shd.make_mesh("fsdp=4,tensor=2")
  with shd.activate(mesh):
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.device_put(state, shd.state_shardings(state, mesh)))
    want = _forward(model, args)   # sharded, float32 kernels (not compared with one device: reductions differ)
    before = model.blocks.self_attn.q.kernel[...].sharding
    assert len(before.device_set) == 8
    cast_kernels(model)
    q = model.blocks.self_attn.q.kernel[...]
    assert q.dtype == jnp.bfloat16 and q.sharding == before
    got = _forward(model, args)
  np.testing.assert_array_equal(got, want)


def test_load_dit_reads_kernels_straight_into_bf16(tmp_path):
  """`load_dit(cast_kernels=True)`: the same parameters, bit for bit, as loading float32 and `cast_kernels`."""
  import os
  from wanjax.dit.load import load_dit
  toy = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "wanjax",
                     "toyworld", "checkpoints", "teacher")
  want = load_dit(toy, policy="bf16")
  assert cast_kernels(want) > 0
  got = load_dit(toy, policy="bf16", cast_kernels=True)
  assert cast_kernels(got) == 0   # nothing left to cast
  a, b = nnx.to_flat_state(nnx.state(want, nnx.Param)), nnx.to_flat_state(nnx.state(got, nnx.Param))
  assert [p for p, _ in a] == [p for p, _ in b]
  for (p, x), (_, y) in zip(a, b):
    x, y = x.get_value(), y.get_value()
    assert x.dtype == y.dtype, p
    np.testing.assert_array_equal(np.asarray(x.astype(jnp.float32)), np.asarray(y.astype(jnp.float32)), err_msg=str(p))
  assert load_dit(toy, policy="float32", cast_kernels=True).blocks.ffn.fc1.kernel[...].dtype == jnp.float32


def _bf16_copy(src, dst):
  """The converted directory `src` with every floating tensor stored in bf16 (as most released Wan files are)."""
  import json
  import os
  import ml_dtypes
  from wanjax.checkpoint import SafetensorsReader, model_files, save_tensors
  os.makedirs(dst)
  with open(os.path.join(src, "config.json")) as f, open(os.path.join(dst, "config.json"), "w") as g:
    json.dump(json.load(f), g)
  reader = SafetensorsReader(model_files(src))
  save_tensors(os.path.join(dst, "model.safetensors"),
               {k: np.asarray(reader.view(k)).astype(ml_dtypes.bfloat16) for k in reader.keys()})
  return dst


def test_exact_cast_at_load_then_lora_merge_equals_the_float32_route(tmp_path):
  """`load_dit(cast_kernels="exact")` (infer.sample with LoRAs): kernels stored in bf16 are read as bf16, float32
  ones stay float32, and a LoRA merged afterwards gives the same kernels, bit for bit, as merging into float32
  copies and casting after (the old route)."""
  import os
  from wanjax.checkpoint import save_tensors
  from wanjax.dit.load import load_dit
  from wanjax.lora import merge_loras
  toy = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "wanjax",
                     "toyworld", "checkpoints", "teacher")
  exact_f32 = load_dit(toy, policy="bf16", cast_kernels="exact")
  assert exact_f32.blocks.ffn.fc1.kernel[...].dtype == jnp.float32   # a float32 file: nothing is exact
  src = _bf16_copy(toy, str(tmp_path / "bf16"))
  rng = np.random.default_rng(0)
  n, d, f = exact_f32.cfg.num_layers, exact_f32.cfg.dim, exact_f32.cfg.ffn_dim
  lora = {}
  for i in range(n):
    lora[f"diffusion_model.blocks.{i}.ffn.0.lora_down.weight"] = rng.standard_normal((4, d)).astype(np.float32)
    lora[f"diffusion_model.blocks.{i}.ffn.0.lora_up.weight"] = 0.1 * rng.standard_normal((f, 4)).astype(np.float32)
  lpath = str(tmp_path / "lora.safetensors")
  save_tensors(lpath, lora)
  old = load_dit(src, policy="bf16")
  merge_loras(old, lpath)
  cast_kernels(old)
  new = load_dit(src, policy="bf16", cast_kernels="exact")
  assert new.blocks.ffn.fc1.kernel[...].dtype == jnp.bfloat16
  before = np.asarray(new.blocks.ffn.fc1.kernel[...].astype(jnp.float32))
  merge_loras(new, lpath)
  assert cast_kernels(new) == 0
  assert not np.array_equal(np.asarray(new.blocks.ffn.fc1.kernel[...].astype(jnp.float32)), before)   # it merged
  for (p, x), (_, y) in zip(nnx.to_flat_state(nnx.state(old, nnx.Param)), nnx.to_flat_state(nnx.state(new, nnx.Param))):
    assert x.get_value().dtype == y.get_value().dtype, p
    np.testing.assert_array_equal(np.asarray(x.get_value().astype(jnp.float32)),
                                  np.asarray(y.get_value().astype(jnp.float32)), err_msg=str(p))


def test_exact_cast_at_load_then_quantisation_equals_the_float32_route(tmp_path):
  """`--config.quant=int8` from a bf16 file: kernels read as bf16 quantise to the same int8 values and scales as
  the float32 copies did (the quantiser reads them in float32); `kernels_at_load` picks the mode per case."""
  import os
  from infer.models import kernels_at_load
  from wanjax.dit.load import load_dit
  toy = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "wanjax",
                     "toyworld", "checkpoints", "teacher")
  src = _bf16_copy(toy, str(tmp_path / "bf16"))
  old = quantlib.quantize_model(load_dit(src, policy="bf16"), "int8")
  new = quantlib.quantize_model(load_dit(src, policy="bf16", cast_kernels="exact"), "int8")
  for name in ("kernel", "kernel_scale"):
    a, b = getattr(old.blocks.ffn.fc1, name)[...], getattr(new.blocks.ffn.fc1, name)[...]
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), name
  assert new.text_embedding.fc1.kernel[...].dtype == jnp.bfloat16   # read as bf16, not quantised
  assert [kernels_at_load(True, False, "none"), kernels_at_load(True, True, "none"),
          kernels_at_load(True, False, "int8"), kernels_at_load(True, True, "int8"),
          kernels_at_load(False, False, "none")] == [True, "exact", "exact", False, "exact"]


@pytest.mark.parametrize("policy", ["bf16", "fp16"])
def test_clip_features_unchanged_by_cast_kernels(policy):
  """The I2V CLIP tower under a half policy (`infer.sample.build_clip` casts its kernels): same features, bit for
  bit, in fewer bytes."""
  from infer.demo import random_model
  from wanjax.image.clip import PRESETS as CLIP, CLIPVisionTower, clip_features
  tower = random_model(lambda: CLIPVisionTower(CLIP["tiny"], policy=policy, rngs=nnx.Rngs(0)), 5)
  image = np.random.default_rng(4).uniform(-1, 1, (40, 52, 3)).astype(np.float32)
  want = np.asarray(clip_features(tower, image))
  assert cast_kernels(tower) > 0
  np.testing.assert_array_equal(np.asarray(clip_features(tower, image)), want)
