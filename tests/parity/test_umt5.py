"""umT5 encoder parity against transformers `UMT5EncoderModel` (random weights), through the converter table.

Covers both checkpoint layouts ("hf" and the original "wan" names), the relative-position buckets (spec §3.3),
fp32 parity with padding masks over a length that reaches the log buckets, bf16 closeness, scan vs loop,
sharded loading, and the real-size parameter count (§3.1).
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters import engine
from converters.names import umt5 as names
from converters.reader import DictSource
from converters.table import expand
from wanjax import checkpoint
from wanjax import sharding as shd
from wanjax.errors import CheckpointError
from wanjax.text import umt5
from wanjax.text.load import load_umt5

FP32_TOL = 1e-4       # max|jax - hf| <= FP32_TOL * max|hf|
BF16_TOL = 5e-2       # bf16 jax vs fp32 hf, relative to max|hf| (transformers' own bf16 run: ~3.7e-2)
SEQ_LEN = 160         # > 128 = max_dist, so every log bucket (and the clamp) is used
REAL_LENS = (160, 83)

# Distinct sizes: dim 24, dim_attn 30 (3 heads x 10), ffn 40, vocab 101.
CFG = umt5.UMT5Config(vocab=101, dim=24, dim_attn=30, dim_ffn=40, num_heads=3, num_layers=2)

SPOT = {-511: 15, -64: 14, -32: 12, -16: 10, -12: 9, -9: 8, -8: 8, -7: 7, -1: 1, 0: 0, 1: 17, 7: 23, 8: 24,
        12: 25, 16: 26, 32: 28, 64: 30, 127: 31, 128: 31, 511: 31}


def test_bucket_spot_values():
  rel = np.array(sorted(SPOT))
  got = umt5.relative_position_bucket(rel)
  assert dict(zip(rel.tolist(), got.tolist())) == SPOT


def test_bucket_grid_is_key_minus_query():
  g = umt5.bucket_grid(5, 7)
  assert g.shape == (5, 7)
  assert g[0, 1] == 17 and g[1, 0] == 1 and g[3, 3] == 0


def _hf_model():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf_cfg = transformers.UMT5Config(
      vocab_size=CFG.vocab, d_model=CFG.dim, d_kv=CFG.head_dim, d_ff=CFG.dim_ffn, num_layers=CFG.num_layers,
      num_heads=CFG.num_heads, relative_attention_num_buckets=32, relative_attention_max_distance=128,
      feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6, is_encoder_decoder=False)
  hf_cfg._attn_implementation = "eager"
  assert hf_cfg.is_gated_act and hf_cfg.dense_act_fn == "gelu_new"
  torch.manual_seed(0)
  model = transformers.UMT5EncoderModel(hf_cfg).eval()
  with torch.no_grad():  # randomise everything, norm weights and relative biases included
    for name, p in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif "relative_attention_bias" in name:
        p.copy_(2.0 * torch.randn_like(p))
      elif name in ("shared.weight", "encoder.embed_tokens.weight"):
        p.copy_(torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
  return model


def _inputs():
  rng = np.random.default_rng(1)
  ids = rng.integers(2, CFG.vocab, (len(REAL_LENS), SEQ_LEN)).astype(np.int32)
  mask = (np.arange(SEQ_LEN)[None] < np.array(REAL_LENS)[:, None]).astype(np.int32)
  return np.where(mask > 0, ids, 0).astype(np.int32), mask


@pytest.fixture(scope="module")
def hf():
  import torch
  model = _hf_model()
  ids, mask = _inputs()
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)).last_hidden_state
  sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
  return model, sd, ref.numpy(), ids, mask


def _expected_shapes(cfg):
  return names.file_shapes(cfg)


def _convert(sd, layout):
  source = DictSource(sd)
  assert names.detect(source.keys()) == layout
  config = names.config_from_keys(source, layout)
  steps = names.plan(layout, config)
  arrays = engine.to_arrays(names.prepare(source, layout), steps, ignore=names.IGNORE[layout],
                            expected=names.file_shapes(config))
  return config, arrays


def _save(tmp_path, config, arrays):
  checkpoint.save_tensors(str(tmp_path / "model.safetensors"), arrays)
  (tmp_path / "config.json").write_text(json.dumps(config))
  return str(tmp_path)


def _hf_to_wan(sd):
  """Renames HF keys to the original Wan names through the table rows themselves."""
  hf_steps = expand(names.TABLE, "hf", num_layers=CFG.num_layers)
  wan_steps = {s.target: s.source for s in expand(names.TABLE, "wan", num_layers=CFG.num_layers)}
  return {wan_steps[s.target]: sd[s.source] for s in hf_steps}


@pytest.mark.torch
def test_bucket_matches_transformers():
  model = _hf_model()
  import torch
  rel = np.arange(-700, 701)
  attn = model.encoder.block[0].layer[0].SelfAttention
  ref = attn._relative_position_bucket(torch.from_numpy(rel)).numpy()
  np.testing.assert_array_equal(umt5.relative_position_bucket(rel), ref)


@pytest.mark.torch
def test_config_and_coverage(hf):
  _, sd, _, _, _ = hf
  config, arrays = _convert(sd, "hf")
  assert config == dict(family="umt5", **CFG.to_json_dict())
  assert umt5.UMT5Config.from_json_dict(config) == CFG
  # Every model parameter produced exactly once (to_arrays already checked every source key is used once).
  assert sorted(arrays) == sorted(_expected_shapes(CFG))
  assert names.detect(["foo.weight"]) is None


@pytest.mark.torch
def test_fp32_parity_hf_layout(hf, tmp_path, rel_err):
  _, sd, ref, ids, mask = hf
  model = load_umt5(_save(tmp_path, *_convert(sd, "hf")), policy="float32")
  out = np.asarray(umt5.forward_t5(model, ids, mask))
  err = rel_err(out, ref)
  print(f"umT5 fp32 parity (hf layout): max rel err {err:.2e}")
  assert err <= FP32_TOL
  for b, n in enumerate(REAL_LENS):  # real tokens alone, too
    assert rel_err(out[b, :n], ref[b, :n]) <= FP32_TOL


@pytest.mark.torch
def test_wan_layout_converts_to_the_same_arrays(hf):
  _, sd, _, _, _ = hf
  wan_sd = _hf_to_wan(sd)
  assert "blocks.1.ffn.gate.0.weight" in wan_sd and len(wan_sd) == 2 + 10 * CFG.num_layers
  config_w, arrays_w = _convert(wan_sd, "wan")
  config_h, arrays_h = _convert(sd, "hf")
  assert config_w == config_h
  assert sorted(arrays_w) == sorted(arrays_h)
  for k in arrays_h:
    np.testing.assert_array_equal(arrays_w[k], arrays_h[k], err_msg=k)


@pytest.mark.torch
def test_convert_cli_path_from_wan_pth(hf, tmp_path, rel_err):
  """The original `.pth` through the shared converter (family detection, streaming write) and the loader."""
  import torch
  from converters.convert import convert_checkpoint
  _, sd, ref, ids, mask = hf
  pth = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
  torch.save(_hf_to_wan(sd), pth)
  summary = convert_checkpoint(str(pth), str(tmp_path / "out"), progress=False)
  assert (summary["family"], summary["layout"], summary["tensors"]) == ("umt5", "wan", 2 + 10 * CFG.num_layers)
  model = load_umt5(str(tmp_path / "out"), policy="float32")
  assert model.cfg == CFG
  assert rel_err(np.asarray(umt5.forward_t5(model, ids, mask)), ref) <= FP32_TOL


@pytest.mark.torch
def test_hf_file_with_only_the_encoder_copy_of_the_embedding(hf):
  _, sd, _, _, _ = hf
  only_enc = {k: v for k, v in sd.items() if k != "shared.weight"}
  only_enc["encoder.embed_tokens.weight"] = sd["shared.weight"]
  view = names.prepare(DictSource(only_enc), "hf")
  arrays = engine.to_arrays(view, names.plan("hf", CFG), ignore=names.IGNORE["hf"])
  np.testing.assert_array_equal(arrays["token_embedding.embedding"], sd["shared.weight"].numpy())


@pytest.mark.torch
def test_missing_and_unexpected_keys_are_listed(hf):
  _, sd, _, _, _ = hf
  bad = dict(sd)
  del bad["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
  bad["encoder.block.1.extra.weight"] = bad["encoder.final_layer_norm.weight"]
  with pytest.raises(CheckpointError, match=r"(?s)wi_1.*extra\.weight"):
    engine.to_arrays(DictSource(bad), names.plan("hf", CFG), ignore=names.IGNORE["hf"])


@pytest.mark.torch
def test_bf16_close_to_fp32(hf, tmp_path, rel_err):
  import torch
  model_hf, sd, ref, ids, mask = hf
  model = load_umt5(_save(tmp_path, *_convert(sd, "hf")), policy="bf16")
  assert model.token_embedding.embedding.dtype == jnp.bfloat16
  out = umt5.forward_t5(model, ids, mask)
  assert out.dtype == jnp.bfloat16
  err = rel_err(np.asarray(out.astype(jnp.float32)), ref)
  # The same model run by transformers in bf16, for scale: the reference precision plan's own error.
  with torch.no_grad():
    ref16 = model_hf.to(torch.bfloat16)(input_ids=torch.from_numpy(ids).long(),
                                       attention_mask=torch.from_numpy(mask)).last_hidden_state
    model_hf.to(torch.float32)
  err_hf = rel_err(ref16.float().numpy(), ref)
  err_vs_hf16 = rel_err(np.asarray(out.astype(jnp.float32)), ref16.float().numpy())
  print(f"umT5 bf16: jax vs fp32 {err:.2e}; hf-bf16 vs fp32 {err_hf:.2e}; jax vs hf-bf16 {err_vs_hf16:.2e}")
  assert err <= BF16_TOL
  assert err <= 1.5 * err_hf  # no worse than the reference's own bf16 plan on the same weights


@pytest.mark.torch
def test_scan_loop_and_sharded_load_agree(hf, tmp_path, rel_err):
  _, sd, ref, ids, mask = hf
  folder = _save(tmp_path, *_convert(sd, "hf"))
  scanned = np.asarray(umt5.forward_t5(load_umt5(folder, policy="float32"), ids, mask))
  looped = np.asarray(umt5.forward_t5(load_umt5(folder, policy="float32", scan=False), ids, mask))
  assert rel_err(looped, scanned) <= 1e-6
  mesh = shd.make_mesh("data=2,fsdp=2,tensor=2")
  sharded = load_umt5(folder, policy="float32", mesh=mesh)
  assert sharded.blocks.attn.q.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  with shd.activate(mesh):
    out = np.asarray(umt5.forward_t5(sharded, ids, mask))
  assert rel_err(out, ref) <= FP32_TOL


def test_xxl_param_count():
  cfg = umt5.PRESETS["umt5_xxl"]
  v, d, da, f, n, l = cfg.vocab, cfg.dim, cfg.dim_attn, cfg.dim_ffn, cfg.num_heads, cfg.num_layers
  formula = v * d + l * (4 * d * da + cfg.num_buckets * n + 2 * d + 3 * d * f) + d
  count = umt5.count_params(cfg)
  assert count == formula
  assert round(count / 1e9, 3) == 5.681
  assert len(_expected_shapes(cfg)) == 242  # tensors in models_t5_umt5-xxl-enc-bf16.pth
