"""CLIP visual tower vs transformers `CLIPVisionModel` (penultimate hidden states), through the converter
name table in both the transformers and the original open-clip layouts (spec §5, pitfall 12)."""

import numpy as np
import pytest

from converters import engine, table
from converters.names import clip as names
from converters.reader import DictSource
from wanjax.errors import CheckpointError, UsageError
from wanjax.image import clip
from wanjax.image.load import load_clip

FP32_TOL = 1e-4     # max|jax - ref| <= tol * max|ref|, fp32 (task)
BF16_TOL = 1e-2     # bf16 matmuls/attention vs the fp32 reference (measured 3.9e-3)
FP16_TOL = 2e-3     # fp16 matmuls/attention vs the fp32 reference (measured 3.6e-4)
SIZES = dict(image_size=28, patch_size=7, hidden_size=24, num_attention_heads=3, intermediate_size=40,
             num_hidden_layers=3)


def _hf_model():
  import torch
  from transformers import CLIPVisionConfig, CLIPVisionModel
  cfg = CLIPVisionConfig(**SIZES, hidden_act="gelu", layer_norm_eps=1e-5, attn_implementation="eager")
  model = CLIPVisionModel(cfg).eval()
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():  # every parameter random, norms around 1
      r = torch.randn(p.shape, generator=g)
      if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
        p.copy_(1.0 + 0.2 * r if name.endswith("weight") else 0.2 * r)
      elif p.ndim >= 2 and "position" not in name:
        p.copy_(r / np.sqrt(np.prod(p.shape[1:])))
      else:
        p.copy_(0.5 * r)
  return model


def _hf_penultimate(model, pixels_nhwc):
  import torch
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2))),
                output_hidden_states=True)
  return out.hidden_states[-2].numpy()


def _to_openclip(hf_sd, *, prefixed=False):
  """The original-named state dict from the HF one, built from the table rows (fused to_qkv = q|k|v rows),
  plus the keys the converter must ignore (last block, post_norm, head, text tower, log_scale)."""
  import torch
  src = "hf" if prefixed else "hf_bare"
  n = SIZES["num_hidden_layers"]
  parts, out = {}, {}
  for row in names.TABLE:
    if src in row.sources and "openclip" in row.sources:  # shared rows: same tensor, maybe reshaped
      for i in range(n):
        k_hf, k_oc = (row.sources[src].replace("{i}", str(i)), row.sources["openclip"].replace("{i}", str(i)))
        out[k_oc] = hf_sd[k_hf]
  by_target = {row.target: row for row in names.TABLE if src in row.sources}
  for row in names.TABLE:
    if "openclip" not in row.sources or src in row.sources:
      continue
    hf_row = by_target[row.target]
    for i in range(n):
      t = hf_sd[hf_row.sources[src].replace("{i}", str(i))]
      k_oc = row.sources["openclip"].replace("{i}", str(i))
      if row.part is not None:
        parts.setdefault(k_oc, {})[row.part[0]] = t
      elif row.transform == "flatten":
        out[k_oc] = t.reshape(1, 1, -1)
      elif row.transform == "squeeze0":
        out[k_oc] = t[None]
      else:
        out[k_oc] = t
  for k, chunks in parts.items():
    out[k] = torch.cat([chunks[j] for j in range(3)], dim=0)
  d = SIZES["hidden_size"]
  out.update({"visual.post_norm.weight": torch.ones(d), "visual.post_norm.bias": torch.zeros(d),
              "visual.head": torch.zeros(d, 16), "log_scale": torch.zeros(()),
              "textual.token_embedding.weight": torch.zeros(5, 8)})
  return out


def _convert_and_load(sd, tmp_path, *, policy="float32", mesh=None, scan=True):
  src = DictSource(sd)
  layout = names.detect(src.keys())
  cfg = names.config_from_keys(src, layout, num_heads=SIZES["num_attention_heads"])
  steps = names.plan(layout, cfg)
  out = tmp_path / layout
  engine.write_model(src, steps, str(out), config=cfg, ignore=names.IGNORE[layout],
                     expected=names.file_shapes(cfg))
  return layout, cfg, load_clip(str(out), policy=policy, mesh=mesh, scan=scan)


@pytest.fixture(scope="module")
def ref():
  pytest.importorskip("torch")
  model = _hf_model()
  rng = np.random.default_rng(0)
  pixels = rng.standard_normal((2, 28, 28, 3)).astype(np.float32)
  return model, pixels, _hf_penultimate(model, pixels)


@pytest.fixture(scope="module")
def converted(ref, tmp_path_factory):
  """The HF model converted once (transformers >= 5 key spelling) and loaded in fp32."""
  model, _, _ = ref
  tmp = tmp_path_factory.mktemp("clip")
  layout, cfg, tower = _convert_and_load(model.state_dict(), tmp)
  return layout, cfg, tower, tmp / layout


@pytest.mark.torch
def test_hf_layout_fp32_parity(ref, converted, rel_err):
  _, pixels, want = ref
  layout, cfg, tower, model_dir = converted
  assert layout == "hf_bare"
  assert clip.CLIPVisionConfig.from_json_dict(cfg) == clip.PRESETS["tiny"]
  got = np.asarray(clip._tower_forward(tower, pixels))
  assert got.shape == (2, 17, 24)
  assert rel_err(got, want) <= FP32_TOL
  # The Python-loop path runs the same stacked parameters.
  got_loop = np.asarray(clip._tower_forward(load_clip(str(model_dir), policy="float32", scan=False), pixels))
  assert rel_err(got_loop, want) <= FP32_TOL


@pytest.mark.torch
def test_prefixed_hf_and_openclip_layouts_load_the_same(ref, tmp_path, rel_err):
  model, pixels, want = ref
  prefixed = {f"vision_model.{k}": v for k, v in model.state_dict().items()}
  prefixed["visual_projection.weight"] = np.zeros((16, 24), np.float32)  # CLIPVisionModelWithProjection
  layout, _, tower_hf = _convert_and_load(prefixed, tmp_path)
  assert layout == "hf"
  layout, cfg, tower_oc = _convert_and_load(_to_openclip(model.state_dict()), tmp_path)
  assert layout == "openclip" and cfg["num_layers"] == 3 and cfg["num_used_layers"] == 2
  a = np.asarray(clip._tower_forward(tower_hf, pixels))
  b = np.asarray(clip._tower_forward(tower_oc, pixels))
  assert rel_err(a, want) <= FP32_TOL
  np.testing.assert_array_equal(a, b)  # same weights, bit for bit


@pytest.mark.torch
def test_encode_image_matches_reference_preprocessing(ref, converted, rel_err):
  import torch
  import torch.nn.functional as F
  model, _, _ = ref
  tower = converted[2]
  rng = np.random.default_rng(3)
  image = rng.uniform(-1, 1, (2, 37, 45, 3)).astype(np.float32)  # [-1, 1], not square, not 28
  # Reference (`CLIPModel.visual`): squash bicubic, x*0.5+0.5, Normalize(mean, std).
  x = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
  x = F.interpolate(x, size=(28, 28), mode="bicubic", align_corners=False).mul_(0.5).add_(0.5)
  mean, std = torch.tensor(clip.CLIP_MEAN)[:, None, None], torch.tensor(clip.CLIP_STD)[:, None, None]
  x = ((x - mean) / std).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(clip.preprocess(image, 28)), x, atol=1e-5)
  want = _hf_penultimate(model, x)
  assert rel_err(clip.encode_image(tower, image), want) <= FP32_TOL
  # clip_features: a list of differently sized images is resized one by one.
  feats = clip.clip_features(tower, [image[0], image[1, :30, :20]])
  assert feats.shape == (2, 17, 24)
  assert rel_err(feats[0], want[0]) <= FP32_TOL


@pytest.mark.torch
@pytest.mark.parametrize("policy,tol", [("bf16", BF16_TOL), ("fp16", FP16_TOL)])
def test_half_precision_policies(ref, tmp_path, rel_err, policy, tol):
  model, pixels, want = ref
  _, _, tower = _convert_and_load(model.state_dict(), tmp_path, policy=policy)
  got = np.asarray(clip._tower_forward(tower, pixels))
  assert got.dtype == np.float32
  err = rel_err(got, want)
  assert 0 < err <= tol  # nonzero: the half-precision path really ran


@pytest.mark.torch
def test_sharded_load_matches(ref, tmp_path, rel_err):
  import jax
  from wanjax import sharding as shd
  model, pixels, want = ref
  mesh = shd.make_mesh("fsdp=2,tensor=4")
  _, _, tower = _convert_and_load(model.state_dict(), tmp_path, mesh=mesh)
  assert tower.blocks.mlp.fc1.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  with shd.activate(mesh):
    got = np.asarray(clip._tower_forward(tower, pixels))
  assert rel_err(got, want) <= FP32_TOL


@pytest.mark.torch
def test_missing_and_malformed_keys_are_reported(ref):
  model, _, _ = ref
  sd = _to_openclip(model.state_dict())
  del sd["visual.transformer.1.attn.to_qkv.bias"]
  sd["visual.transformer.0.attn.to_qkv.scale"] = sd["visual.pre_norm.bias"]
  src = DictSource(sd)
  cfg = names.config_from_keys(src, "openclip", num_heads=3)
  with pytest.raises(CheckpointError) as e:
    table.check_plan(names.plan("openclip", cfg), src.keys(), ignore=names.IGNORE["openclip"])
  assert "visual.transformer.1.attn.to_qkv.bias" in str(e.value)
  assert "visual.transformer.0.attn.to_qkv.scale" in str(e.value)


class _ShapeSource:
  """Keys and shapes only (real-size coverage without allocating a tensor)."""

  def __init__(self, shapes):
    self._shapes = shapes

  def keys(self):
    return list(self._shapes)

  def shape(self, key):
    return self._shapes[key]


def _openclip_vit_h_shapes():
  """The 392 `visual.*` keys of §5.4 (+ a text-tower key and log_scale)."""
  d, m, p = 1280, 5120, 14
  s = {"visual.patch_embedding.weight": (d, 3, p, p), "visual.cls_embedding": (1, 1, d),
       "visual.pos_embedding": (1, 257, d), "visual.pre_norm.weight": (d,), "visual.pre_norm.bias": (d,),
       "visual.post_norm.weight": (d,), "visual.post_norm.bias": (d,), "visual.head": (d, 1024),
       "textual.token_embedding.weight": (514, 1024), "log_scale": ()}
  for i in range(32):
    b = f"visual.transformer.{i}"
    s.update({f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,),
              f"{b}.norm2.weight": (d,), f"{b}.norm2.bias": (d,),
              f"{b}.attn.to_qkv.weight": (3 * d, d), f"{b}.attn.to_qkv.bias": (3 * d,),
              f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,),
              f"{b}.mlp.0.weight": (m, d), f"{b}.mlp.0.bias": (m,), f"{b}.mlp.2.weight": (d, m), f"{b}.mlp.2.bias": (d,)})
  return s


def test_vit_h_14_real_size_plan_and_param_count():
  shapes = _openclip_vit_h_shapes()
  assert sum(k.startswith("visual.") for k in shapes) == 392
  src = _ShapeSource(shapes)
  assert names.detect(src.keys()) == "openclip"
  cfg = names.config_from_keys(src, "openclip")
  assert clip.CLIPVisionConfig.from_json_dict(cfg) == clip.PRESETS["vit_h_14"]
  steps = names.plan("openclip", cfg)
  table.check_plan(steps, src.keys(), ignore=names.IGNORE["openclip"])
  table.check_shapes(steps, src, names.file_shapes(cfg))
  assert len({s.target for s in steps}) == len(names.file_shapes(cfg)) == 5 + 31 * 16
  # 31 blocks of (4 D² + 4 D  +  2 D M + M + D  +  4 D) plus patch, cls, pos and pre_norm.
  d, m = 1280, 5120
  want = 31 * (4 * d * d + 4 * d + 2 * d * m + m + d + 4 * d) + d * 3 * 14 * 14 + d + 257 * d + 2 * d
  assert want == 611_086_080
  assert clip.count_params(clip.PRESETS["vit_h_14"]) == want


def test_config_and_input_errors():
  with pytest.raises(UsageError, match="vit_h_14"):
    clip.get_config("vit_h14")
  with pytest.raises(UsageError, match="num_heads"):
    clip.CLIPVisionConfig(width=24, num_heads=5)
  from flax import nnx
  tower = nnx.eval_shape(lambda: clip.CLIPVisionTower(clip.PRESETS["tiny"], rngs=nnx.Rngs(0)))
  with pytest.raises(UsageError, match="preprocess"):
    tower(np.zeros((1, 32, 32, 3), np.float32))
