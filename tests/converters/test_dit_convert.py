"""DiT converter: table coverage per preset x layout, parity of the original layout against diffusers, the
ComfyUI / LightX2V / Self-Forcing wrappers, config inference and error messages."""

import json

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from converters import families, table
from converters.convert import convert_checkpoint
from converters.names import dit
from converters.reader import DictSource
from tests.conftest import max_rel_err
from tests.converters.dit_fixtures import original_shapes, quantize_lightx2v, random_original
from wanjax import checkpoint
from wanjax.checkpoint import SafetensorsReader, save_tensors
from wanjax.dit.config import PRESETS, DiTConfig
from wanjax.errors import CheckpointError, UsageError

PARITY_TOL = 1e-5        # JAX vs diffusers, fp32 (measured ~4e-6 t2v, ~5e-6 i2v)
INT8_TOL = 1e-2          # fp32 model vs its int8 per-channel quantised weights (measured 4.1e-3)
FP8_TOL = 8e-2           # fp32 model vs fp8 e4m3 per-channel weights, 3 mantissa bits (measured 3.7e-2)
QRUNTIME_TOL = 1e-5      # quantised-kernel runtime vs the dequantised fp32 model (measured 2e-7)
TINY = PRESETS["tiny"]


def _diffusers_kwargs(cfg):
  return dict(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
              in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
              ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", eps=cfg.eps, image_dim=cfg.image_dim if cfg.has_image_input else None,
              added_kv_proj_dim=cfg.dim if cfg.has_image_input else None,
              pos_embed_seq_len=514 if cfg.model_type == "flf2v" else None)


class ShapeSource(DictSource):
  """Keys and shapes only (no data): enough for planning and shape checks at full size."""

  def shape(self, key):
    return tuple(self._sd[key])

  def dtype(self, key):
    return "float32"


def _diffusers_shapes(cfg):
  import torch
  from diffusers import WanTransformer3DModel
  with torch.device("meta"):
    model = WanTransformer3DModel(**_diffusers_kwargs(cfg))
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- coverage


@pytest.mark.torch
@pytest.mark.parametrize("preset", ["t2v_1_3b", "t2v_14b", "i2v_14b", "flf2v_14b"])
@pytest.mark.parametrize("layout", ["wan", "diffusers"])
def test_table_covers_every_key_once(preset, layout):
  from wanjax.dit.model import WanDiT
  cfg = PRESETS[preset]
  abstract = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
  expected = checkpoint.expected_file_shapes(nnx.state(abstract, nnx.Param))
  shapes = original_shapes(cfg) if layout == "wan" else _diffusers_shapes(cfg)
  src = ShapeSource(shapes)
  assert dit.detect(src.keys()) == layout
  steps = table.expand(dit.TABLE, layout, num_layers=cfg.num_layers, tags=dit.tags(cfg))
  sources = [s.source for s in steps]
  targets = [s.target for s in steps]
  assert len(sources) == len(set(sources)) and len(targets) == len(set(targets))
  table.check_plan(steps, src.keys(), ignore=dit.IGNORE[layout])   # no missing, no unexpected source key
  assert set(targets) == set(expected)
  table.check_shapes(steps, src, expected)
  assert {k: tuple(v) for k, v in expected.items()} == dit.file_shapes(cfg)
  config = dit.config_from_keys(src, layout)
  assert dit.dit_config(config) == cfg


# ------------------------------------------------------------------------------------------- parity


def _jax_forward(out_dir, x, t, ctx, **kw):
  import jax
  from wanjax.dit.load import load_dit
  from wanjax.dit.model import make_forward
  fwd, params, rest = make_forward(load_dit(out_dir))
  v = jax.jit(fwd)(params, rest, np.moveaxis(x, 1, -1), t, ctx, **kw)
  return np.moveaxis(np.asarray(v), -1, 1)


def _inputs(cfg, seed=3, b=2, f=3, h=4, w=6):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, 16, f, h, w)).astype(np.float32)
  ctx = rng.standard_normal((b, cfg.text_len, cfg.text_dim)).astype(np.float32)
  return x, np.array([999, 37][:b]), ctx, rng


@pytest.mark.torch
@pytest.mark.parametrize("model_type", ["t2v", pytest.param("i2v", marks=pytest.mark.slow)])
def test_original_layout_matches_diffusers(tmp_path, model_type):
  """Random original-layout weights -> diffusers' own original->diffusers converter -> reference forward;
  the same original file through our 'wan' table -> JAX forward."""
  import torch
  from diffusers import WanTransformer3DModel
  from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
  i2v = model_type == "i2v"
  # diffusers hard-codes 512 text tokens in I2V cross-attention, so the i2v case uses text_len=512.
  cfg = DiTConfig(dim=24, ffn_dim=40, num_heads=2, num_layers=3, text_dim=20, text_len=512 if i2v else 7,
                  model_type=model_type, in_dim=36 if i2v else 16, image_dim=18 if i2v else 1280)
  sd = random_original(cfg, seed=1)
  ref = WanTransformer3DModel(**_diffusers_kwargs(cfg)).eval()
  ref.load_state_dict(convert_wan_transformer_to_diffusers({k: torch.from_numpy(v.copy()) for k, v in sd.items()}),
                      strict=True)
  save_tensors(str(tmp_path / "dit.safetensors"), sd)
  (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 24, "num_heads": 2,
                                                    "num_layers": 3, "text_len": cfg.text_len}))
  s = convert_checkpoint(str(tmp_path / "dit.safetensors"), str(tmp_path / "out"), progress=False)
  assert s["layout"] == "wan" and dit.dit_config(s["config"]) == cfg
  x, t, ctx, rng = _inputs(cfg)
  kw, dkw, xin = {}, {}, x
  if i2v:
    clip = rng.standard_normal((2, 257, 18)).astype(np.float32)
    y = rng.standard_normal((2, 20) + x.shape[2:]).astype(np.float32)
    kw = dict(clip_fea=clip, y=np.moveaxis(y, 1, -1))
    dkw = dict(encoder_hidden_states_image=torch.from_numpy(clip))
    xin = np.concatenate([x, y], axis=1)
  with torch.no_grad():
    want = ref(torch.from_numpy(xin), torch.from_numpy(t), torch.from_numpy(ctx), return_dict=False, **dkw)[0]
  got = _jax_forward(str(tmp_path / "out"), x, t, ctx, **kw)
  err = max_rel_err(got, want.numpy())
  print(f"{model_type}: JAX vs diffusers max rel err {err:.2e}")
  assert err <= PARITY_TOL


@pytest.mark.torch
def test_diffusers_layout_converts_to_same_tensors(tmp_path):
  import torch
  from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
  cfg = PRESETS["tiny_i2v"]
  sd = random_original(cfg, seed=2)
  dsd = convert_wan_transformer_to_diffusers({k: torch.from_numpy(v.copy()) for k, v in sd.items()})
  save_tensors(str(tmp_path / "orig.safetensors"), sd)
  (tmp_path / "d").mkdir()
  save_tensors(str(tmp_path / "d" / "diffusion_pytorch_model.safetensors"), {k: v.numpy() for k, v in dsd.items()})
  (tmp_path / "d" / "config.json").write_text(json.dumps(
      {"_class_name": "WanTransformer3DModel", "num_attention_heads": 2, "attention_head_dim": 12, "num_layers": 3}))
  a = convert_checkpoint(str(tmp_path / "orig.safetensors"), str(tmp_path / "a"), num_heads=2, progress=False)
  b = convert_checkpoint(str(tmp_path / "d"), str(tmp_path / "b"), progress=False)
  assert (a["layout"], b["layout"]) == ("wan", "diffusers")
  assert {k: v for k, v in a["config"].items() if k != "source_layout"} == \
      {k: v for k, v in b["config"].items() if k != "source_layout"}
  ra = SafetensorsReader([str(tmp_path / "a" / "model.safetensors")])
  rb = SafetensorsReader([str(tmp_path / "b" / "model.safetensors")])
  assert sorted(ra.keys()) == sorted(rb.keys())
  for k in ra.keys():
    np.testing.assert_array_equal(ra.view(k), rb.view(k), err_msg=k)
  # Spot-check the layout transforms against the torch tensors.
  np.testing.assert_array_equal(ra.view("blocks.1.ffn.fc1.kernel"), sd["blocks.1.ffn.0.weight"].T)
  np.testing.assert_array_equal(ra.view("blocks.2.norm3.scale"), sd["blocks.2.norm3.weight"])
  np.testing.assert_array_equal(ra.view("patch_embedding.kernel"),
                                sd["patch_embedding.weight"].transpose(2, 3, 4, 1, 0))


# ------------------------------------------------------------------------------ wrapped layouts


def _tensors(path):
  r = SafetensorsReader([str(path / "model.safetensors")])
  return {k: np.array(r.view(k)) for k in r.keys()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """The tiny original-layout checkpoint, its plain conversion, and one compiled forward to reuse."""
  import jax
  from wanjax.dit.load import load_dit
  from wanjax.dit.model import make_forward
  d = tmp_path_factory.mktemp("base")
  sd = random_original(TINY, seed=4)
  save_tensors(str(d / "dit.safetensors"), sd)
  convert_checkpoint(str(d / "dit.safetensors"), str(d / "out"), num_heads=2, progress=False)
  fwd, params, rest = make_forward(load_dit(str(d / "out")))
  fn = jax.jit(fwd)
  x, t, ctx, _ = _inputs(TINY, seed=5)

  def run(out_dir, same_graph=True):
    f, p, r = make_forward(load_dit(str(out_dir)))
    return np.asarray((fn if same_graph else jax.jit(f))(p, r, np.moveaxis(x, 1, -1), t, ctx))

  return dict(sd=sd, dir=d, tensors=_tensors(d / "out"), run=run, v=run(d / "out"))


def test_comfyui_prefix_gives_identical_tensors(base, tmp_path):
  sd = {"model.diffusion_model." + k: v for k, v in base["sd"].items()}
  sd["first_stage_model.decoder.conv_in.weight"] = np.zeros((2, 3), np.float32)  # bundled VAE: skipped
  save_tensors(str(tmp_path / "comfy.safetensors"), sd)
  s = convert_checkpoint(str(tmp_path / "comfy.safetensors"), str(tmp_path / "out"), num_heads=2, progress=False)
  assert s["layout"] == "comfyui"
  got = _tensors(tmp_path / "out")
  assert got.keys() == base["tensors"].keys()
  for k, v in base["tensors"].items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.parametrize("fmt,tol", [("int8", INT8_TOL), ("fp8", FP8_TOL)])
def test_lightx2v_quantized(base, tmp_path, fmt, tol):
  qsd, deq = quantize_lightx2v(base["sd"], fmt)
  save_tensors(str(tmp_path / "q.safetensors"), qsd)
  s = convert_checkpoint(str(tmp_path / "q.safetensors"), str(tmp_path / "deq"), num_heads=2, progress=False)
  assert s["layout"] == {"int8": "lightx2v_int8", "fp8": "lightx2v_fp8"}[fmt]
  got = _tensors(tmp_path / "deq")
  assert len(deq) == TINY.num_layers * 10
  for k, v in base["tensors"].items():   # dequantised exactly; everything else untouched
    want = v
    for wk, w in deq.items():
      if k == dit_target(wk):
        want = w.T
    np.testing.assert_array_equal(got[k], want, err_msg=k)
  v_deq = base["run"](tmp_path / "deq")
  err = max_rel_err(v_deq, base["v"])
  print(f"{fmt}: quantised vs fp32 forward max rel err {err:.2e}")
  assert 0 < err <= tol, err
  # Kept quantised: int8/fp8 kernel [in, out] + kernel_scale [1, out]; the quantised runtime matches the
  # dequantised model.
  s = convert_checkpoint(str(tmp_path / "q.safetensors"), str(tmp_path / "keep"), num_heads=2, keep_quantized=True,
                         progress=False)
  assert s["config"]["quantization"]["format"] == {"int8": "int8", "fp8": "float8_e4m3fn"}[fmt]
  kept = _tensors(tmp_path / "keep")
  np.testing.assert_array_equal(kept["blocks.1.ffn.fc2.kernel"], qsd["blocks.1.ffn.2.weight"].T)
  np.testing.assert_array_equal(kept["blocks.1.ffn.fc2.kernel_scale"], qsd["blocks.1.ffn.2.weight_scale"].T)
  v_keep = base["run"](tmp_path / "keep", same_graph=False)   # quantised Dense layers: another graph
  err = max_rel_err(v_keep, v_deq)
  print(f"{fmt}: quantised runtime vs dequantised forward max rel err {err:.2e}")
  assert err <= QRUNTIME_TOL
  # --dtype casts everything except the quantised kernels and their scales.
  convert_checkpoint(str(tmp_path / "q.safetensors"), str(tmp_path / "keep16"), num_heads=2, keep_quantized=True,
                     dtype="bfloat16", progress=False)
  kept = _tensors(tmp_path / "keep16")
  assert kept["blocks.1.ffn.fc2.kernel"].dtype == qsd["blocks.1.ffn.2.weight"].dtype
  assert kept["blocks.1.ffn.fc2.kernel_scale"].dtype == np.float32
  assert kept["blocks.1.ffn.fc2.bias"].dtype == ml_dtypes.bfloat16


def dit_target(weight_key):
  """'blocks.1.ffn.0.weight' -> 'blocks.1.ffn.fc1.kernel' through the table (tests use the table only here)."""
  for s in table.expand(dit.TABLE, "wan", num_layers=TINY.num_layers):
    if s.source == weight_key:
      return s.target
  raise KeyError(weight_key)


def test_comfyui_per_tensor_fp8_scale(base, tmp_path):
  sd = {}
  for k, w in base["sd"].items():
    if k.startswith("blocks.0.self_attn.") and k.endswith(".weight") and w.ndim == 2:
      s = np.float32(np.abs(w).max() / 448)
      sd["model.diffusion_model." + k] = (w / s).astype(ml_dtypes.float8_e4m3fn)
      sd["model.diffusion_model." + k[:-len("weight")] + "scale_weight"] = np.array([s], np.float32)
    else:
      sd["model.diffusion_model." + k] = w
  sd["scaled_fp8"] = np.zeros((0,), ml_dtypes.float8_e4m3fn)
  save_tensors(str(tmp_path / "c.safetensors"), sd)
  s = convert_checkpoint(str(tmp_path / "c.safetensors"), str(tmp_path / "out"), num_heads=2, progress=False)
  assert s["layout"] == "comfyui"
  got = _tensors(tmp_path / "out")
  q = sd["model.diffusion_model.blocks.0.self_attn.k.weight"]
  scale = sd["model.diffusion_model.blocks.0.self_attn.k.scale_weight"]
  np.testing.assert_array_equal(got["blocks.0.self_attn.k.kernel"], (q.astype(np.float32) * scale[0]).T)
  np.testing.assert_array_equal(got["blocks.1.self_attn.k.kernel"], base["tensors"]["blocks.1.self_attn.k.kernel"])


@pytest.mark.torch
def test_self_forcing_pt_selects_subkey(base, tmp_path):
  import torch
  gen = {"model." + k: torch.from_numpy(v.copy()) for k, v in base["sd"].items()}
  ema = {k: v * 0.5 + 1.0 for k, v in gen.items()}
  torch.save({"generator": gen, "generator_ema": ema, "step": 7}, str(tmp_path / "sf.pt"))
  kq = "blocks.2.cross_attn.v.kernel"
  want_gen = base["tensors"][kq]
  for subkey, want in ((None, want_gen * 0.5 + 1.0), ("generator_ema", want_gen * 0.5 + 1.0), ("generator", want_gen)):
    out = tmp_path / f"out_{subkey}"
    s = convert_checkpoint(str(tmp_path / "sf.pt"), str(out), subkey=subkey, num_heads=2, progress=False)
    assert s["layout"] == "self_forcing" and s["subkey"] == (subkey or "generator_ema")
    np.testing.assert_array_equal(_tensors(out)[kq], want)
  with pytest.raises(CheckpointError, match="'generator_emma'"):
    convert_checkpoint(str(tmp_path / "sf.pt"), str(tmp_path / "x"), subkey="generator_emma", progress=False)


# --------------------------------------------------------------------------- config inference


def test_config_from_keys_heads(tmp_path):
  sd = random_original(TINY, seed=6)
  src = DictSource(sd)
  with pytest.raises(UsageError, match=r"dim=24 .*--num-heads"):
    dit.config_from_keys(src, "wan")
  cfg = dit.config_from_keys(src, "wan", num_heads=3)
  assert (cfg["dim"], cfg["num_heads"], cfg["num_layers"], cfg["ffn_dim"], cfg["text_dim"]) == (24, 3, 3, 40, 20)
  js = {"num_attention_heads": 2, "attention_head_dim": 12, "num_layers": 3, "eps": 1e-5}
  cfg = dit.config_from_keys(src, "wan", config_json=js)
  assert (cfg["num_heads"], cfg["eps"]) == (2, 1e-5)
  # A config.json describing another model is ignored (heads then come from the override).
  cfg = dit.config_from_keys(src, "wan", config_json={"dim": 1536, "num_heads": 12}, num_heads=4)
  assert cfg["num_heads"] == 4
  big = DictSource({k: np.zeros(v, np.float32) for k, v in original_shapes(DiTConfig(
      dim=256, ffn_dim=40, num_heads=2, num_layers=1, text_dim=20)).items()})
  assert dit.config_from_keys(big, "wan")["num_heads"] == 2   # head dim 128 by default


def test_load_dit_checks_model_type(base):
  from wanjax.dit.load import load_dit
  with pytest.raises(UsageError, match=r"'t2v' checkpoint but a 'i2v' model"):
    load_dit(str(base["dir"] / "out"), expect_model_type="i2v")


# ------------------------------------------------------------------------------------------ errors


def test_unknown_layout_lists_what_it_looked_for():
  src = DictSource({"encoder.layer.0.weight": np.zeros(2), "foo": np.zeros(1)})
  with pytest.raises(CheckpointError, match=r"looked for .*patch_embedding\.weight.*model\.diffusion_model"):
    dit.detect(src.keys())
  with pytest.raises(CheckpointError, match=r"no known model family.*'encoder\.layer\.0\.weight'"):
    families.detect(src)


def _convert_broken(tmp_path, edit):
  sd = random_original(TINY, seed=7)
  edit(sd)
  save_tensors(str(tmp_path / "b.safetensors"), sd)
  with pytest.raises(CheckpointError) as e:
    convert_checkpoint(str(tmp_path / "b.safetensors"), str(tmp_path / "out"), num_heads=2, progress=False)
  assert not (tmp_path / "out" / "model.safetensors").exists()
  return str(e.value)


def test_missing_key_is_named(tmp_path):
  msg = _convert_broken(tmp_path, lambda sd: sd.pop("blocks.1.cross_attn.k.bias"))
  assert "1 missing key" in msg and "blocks.1.cross_attn.k.bias" in msg


def test_unexpected_key_is_named(tmp_path):
  msg = _convert_broken(tmp_path, lambda sd: sd.update({"blocks.0.self_attn.extra.weight": np.zeros((2, 2))}))
  assert "1 unexpected key" in msg and "blocks.0.self_attn.extra.weight" in msg


def test_shape_mismatch_names_key_and_shapes(tmp_path):
  msg = _convert_broken(tmp_path, lambda sd: sd.update({"blocks.2.ffn.0.weight": np.zeros((41, 24), np.float32),
                                                         "blocks.2.ffn.0.bias": np.zeros((41,), np.float32)}))
  assert "blocks.2.ffn.0.weight: checkpoint (24, 41) vs model (24, 40)" in msg
  assert "blocks.2.ffn.0.bias: checkpoint (41,) vs model (40,)" in msg


def test_load_dit_shards_into_mesh(base):
  from wanjax.dit.load import load_dit
  from wanjax.sharding import make_mesh
  mesh = make_mesh("fsdp=2,tensor=4")
  model = load_dit(str(base["dir"] / "out"), mesh=mesh)
  q = model.blocks.self_attn.q.kernel[...]             # [layers, D, D], axes (layers, embed, heads)
  assert tuple(q.sharding.spec) == (None, "fsdp", "tensor")
  np.testing.assert_array_equal(np.asarray(q)[2], base["sd"]["blocks.2.self_attn.q.weight"].T)
