"""LoRA / diff merging (`wanjax.lora`) against manual NumPy merges on a tiny random DiT, plus export round trip.

The expected values are written out by hand per case (`W[layer] += s·scale·(up @ down).T` in the JAX kernel
layout), independent of the name table the implementation resolves keys with.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wanjax import checkpoint, lora
from wanjax import sharding as shd
from wanjax.dit.config import get_config
from wanjax.dit.model import WanDiT
from wanjax.errors import CheckpointError, UsageError

TOL = 1e-6        # float32 merge on device vs float64 NumPy reference, relative to max|W|
D, M, L = 24, 40, 3  # tiny preset: dim, ffn_dim, layers


@pytest.fixture(scope="module")
def base():
  """(state, {param path: float64 numpy}) of the tiny DiT with every parameter randomised."""
  model = WanDiT(get_config("tiny"), rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(1)
  state = nnx.map_state(lambda p, v: v.replace(jnp.asarray(rng.normal(size=v.get_value().shape), jnp.float32)),
                        state)
  ref = {k: np.asarray(v.get_value(), np.float64) for k, v in checkpoint.flat_params(state).items()}
  return state, ref


def _np(state):
  return {k: np.asarray(v.get_value(), np.float64) for k, v in checkpoint.flat_params(state).items()}


def _close(got, want):
  for k in want:
    err = np.max(np.abs(got[k] - want[k])) / max(np.max(np.abs(want[k])), 1e-30)
    assert err <= TOL, (k, err)
  assert set(got) == set(want)


def _pair(rng, r, din, dout):
  return rng.normal(size=(r, din)).astype(np.float32), rng.normal(size=(dout, r)).astype(np.float32)


STYLES = {  # (down suffix, up suffix)
    "lora_down/up": (".lora_down.weight", ".lora_up.weight"),
    "lora_A/B": (".lora_A.weight", ".lora_B.weight"),
    ".lora.down/up": (".lora.down.weight", ".lora.up.weight"),
    "_lora.down/up": ("_lora.down.weight", "_lora.up.weight"),
}
PREFIXES = ("", "diffusion_model.", "model.diffusion_model.", "transformer.")


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("alpha", [None, 6.0])
def test_pair_merge_matches_numpy(base, style, prefix, alpha):
  state, ref = base
  rng = np.random.default_rng(2)
  r, s = 3, 0.7
  dq, uq = _pair(rng, r, D, D)            # blocks.1.self_attn.q  [D, D]
  df, uf = _pair(rng, 5, D, M)            # blocks.2.ffn.0        [M, D] in torch layout
  dt, ut = _pair(rng, 2, D, 6 * D)        # time_projection.1 (not stacked)
  down_s, up_s = STYLES[style]
  t = {}
  for mod, (d, u) in {"blocks.1.self_attn.q": (dq, uq), "blocks.2.ffn.0": (df, uf),
                      "time_projection.1": (dt, ut)}.items():
    t[prefix + mod + down_s], t[prefix + mod + up_s] = d, u
    if alpha is not None:
      t[prefix + mod + ".alpha"] = np.asarray(alpha, np.float32)
  got = _np(lora.merge_loras(state, [(t, s)]))
  want = {k: v.copy() for k, v in ref.items()}
  sc = lambda rank: s * (alpha / rank if alpha is not None else 1.0)  # noqa: E731
  want["blocks.self_attn.q.kernel"][1] += sc(r) * (uq.astype(np.float64) @ dq).T
  want["blocks.ffn.fc1.kernel"][2] += sc(5) * (uf.astype(np.float64) @ df).T
  want["time_projection.fc.kernel"] += sc(2) * (ut.astype(np.float64) @ dt).T
  _close(got, want)


def test_diff_tensors(base):
  state, ref = base
  rng = np.random.default_rng(3)
  s = -1.3
  t = {
      "diffusion_model.blocks.0.norm3.diff": rng.normal(size=D),            # norm weight -> scale
      "diffusion_model.blocks.0.norm3.diff_b": rng.normal(size=D),          # norm bias
      "diffusion_model.blocks.2.cross_attn.norm_k.diff": rng.normal(size=D),
      "diffusion_model.blocks.1.ffn.2.diff": rng.normal(size=(D, M)),       # Linear [out, in] -> kernel.T
      "diffusion_model.blocks.1.cross_attn.o.diff_b": rng.normal(size=D),
      "diffusion_model.blocks.2.diff_m": rng.normal(size=(1, 6, D)),        # -> blocks.modulation[2]
      "diffusion_model.head.head.diff_b": rng.normal(size=64),
      "diffusion_model.head.diff_m": rng.normal(size=(1, 2, D)),            # -> head.modulation
      "diffusion_model.text_embedding.0.diff": rng.normal(size=(D, 20)),
  }
  t = {k: v.astype(np.float32) for k, v in t.items()}
  got = _np(lora.merge_loras(state, [(t, s)]))
  want = {k: v.copy() for k, v in ref.items()}
  p = "diffusion_model."
  want["blocks.norm3.scale"][0] += s * t[p + "blocks.0.norm3.diff"]
  want["blocks.norm3.bias"][0] += s * t[p + "blocks.0.norm3.diff_b"]
  want["blocks.cross_attn.norm_k.scale"][2] += s * t[p + "blocks.2.cross_attn.norm_k.diff"]
  want["blocks.ffn.fc2.kernel"][1] += s * t[p + "blocks.1.ffn.2.diff"].T
  want["blocks.cross_attn.o.bias"][1] += s * t[p + "blocks.1.cross_attn.o.diff_b"]
  want["blocks.modulation"][2] += s * t[p + "blocks.2.diff_m"]
  want["head.head.bias"] += s * t[p + "head.head.diff_b"]
  want["head.modulation"] += s * t[p + "head.diff_m"]
  want["text_embedding.fc1.kernel"] += s * t[p + "text_embedding.0.diff"].T
  _close(got, want)


def _lora_a(rng):
  dq, uq = _pair(rng, 4, D, D)
  return {"diffusion_model.blocks.0.self_attn.v.lora_down.weight": dq,
          "diffusion_model.blocks.0.self_attn.v.lora_up.weight": uq,
          "diffusion_model.blocks.0.self_attn.v.alpha": np.asarray(8.0, np.float32),
          "diffusion_model.blocks.0.self_attn.v.diff_b": rng.normal(size=D).astype(np.float32)}


def _lora_b(rng):
  dq, uq = _pair(rng, 2, D, D)
  return {"blocks.0.self_attn.v.lora_A.weight": dq, "blocks.0.self_attn.v.lora_B.weight": uq,
          "blocks.1.cross_attn.k.lora_A.weight": dq, "blocks.1.cross_attn.k.lora_B.weight": uq}


def test_two_loras_add_and_strengths_scale(base):
  state, ref = base
  rng = np.random.default_rng(4)
  a, b = _lora_a(rng), _lora_b(rng)
  p = "diffusion_model.blocks.0.self_attn.v."
  delta_a = 2.0 * (a[p + "lora_up.weight"].astype(np.float64) @ a[p + "lora_down.weight"]).T   # alpha/r = 8/4
  delta_b = (b["blocks.0.self_attn.v.lora_B.weight"].astype(np.float64) @ b["blocks.0.self_attn.v.lora_A.weight"]).T
  got = _np(lora.merge_loras(state, [(a, 0.5), (b, -1.5)]))
  want = {k: v.copy() for k, v in ref.items()}
  want["blocks.self_attn.v.kernel"][0] += 0.5 * delta_a - 1.5 * delta_b
  want["blocks.self_attn.v.bias"][0] += 0.5 * a[p + "diff_b"]
  want["blocks.cross_attn.k.kernel"][1] += -1.5 * delta_b
  _close(got, want)
  # Strength is linear: merging at 2 moves twice as far as merging at 1.
  one = _np(lora.merge_loras(state, [(a, 1.0)]))["blocks.self_attn.v.kernel"] - ref["blocks.self_attn.v.kernel"]
  two = _np(lora.merge_loras(state, [(a, 2.0)]))["blocks.self_attn.v.kernel"] - ref["blocks.self_attn.v.kernel"]
  np.testing.assert_allclose(two, 2 * one, rtol=0, atol=TOL * np.abs(ref["blocks.self_attn.v.kernel"]).max())


def test_diffusers_peft_names_map_to_the_same_params(base):
  state, _ = base
  rng = np.random.default_rng(5)
  pairs = {m: _pair(rng, 3, *io) for m, io in {"q": (D, D), "o": (D, D), "f0": (D, M), "f2": (M, D),
                                                 "k2": (D, D), "te": (20, D)}.items()}
  bias = rng.normal(size=D).astype(np.float32)
  names = {  # original module -> diffusers module (spec §2.3)
      "q": ("blocks.1.self_attn.q", "blocks.1.attn1.to_q"),
      "o": ("blocks.0.self_attn.o", "blocks.0.attn1.to_out.0"),
      "f0": ("blocks.2.ffn.0", "blocks.2.ffn.net.0.proj"),
      "f2": ("blocks.2.ffn.2", "blocks.2.ffn.net.2"),
      "k2": ("blocks.0.cross_attn.k", "blocks.0.attn2.to_k"),
      "te": ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
  }
  wan = {"diffusion_model.blocks.1.norm3.diff": bias, "diffusion_model.blocks.1.self_attn.q.diff_b": bias}
  dif = {"transformer.blocks.1.norm2.diff": bias, "transformer.blocks.1.attn1.to_q.lora_B.bias": bias}
  for m, (w, d) in names.items():
    wan[f"diffusion_model.{w}.lora_down.weight"], wan[f"diffusion_model.{w}.lora_up.weight"] = pairs[m]
    dif[f"transformer.{d}.lora_A.weight"], dif[f"transformer.{d}.lora_B.weight"] = pairs[m]
  # Kohya spelling of the same modules (underscored paths).
  koh = {}
  for m, (w, _) in names.items():
    base_ = "lora_unet_" + w.replace(".", "_")
    koh[base_ + ".lora_down.weight"], koh[base_ + ".lora_up.weight"] = pairs[m]
  koh["lora_unet_blocks_1_norm3.diff"] = bias
  koh["lora_unet_blocks_1_self_attn_q.diff_b"] = bias
  a = _np(lora.merge_loras(state, [(wan, 0.9)]))
  b = _np(lora.merge_loras(state, [(dif, 0.9)]))
  c = _np(lora.merge_loras(state, [(koh, 0.9)]))
  changed = [k for k in a if np.any(a[k] != _np(state)[k])]
  assert len(changed) == 8, changed
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(a[k], c[k], err_msg=k)


def test_unmatched_keys_raise_listing_them_sorted(base, caplog):
  state, ref = base
  rng = np.random.default_rng(6)
  d, u = _pair(rng, 2, D, D)
  t = {"diffusion_model.blocks.0.self_attn.q.lora_down.weight": d,
       "diffusion_model.blocks.0.self_attn.q.lora_up.weight": u,
       "diffusion_model.blocks.9.self_attn.q.lora_down.weight": d,      # layer 9 of a 3-layer model
       "diffusion_model.blocks.9.self_attn.q.lora_up.weight": u,
       "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": d,  # I2V module on a T2V model
       "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": u,
       "diffusion_model.blocks.0.mystery.lora_down.weight": d,
       "diffusion_model.blocks.0.mystery.lora_up.weight": u,
       "some_random_tensor": d}
  bad = sorted(k for k in t if "blocks.0.self_attn.q" not in k)
  with pytest.raises(UsageError) as e:
    lora.merge_loras(state, [(t, 1.0)])
  msg = str(e.value)
  lines = [ln.strip() for ln in msg.splitlines()[1:]]
  assert [ln.split(":")[0] for ln in lines] == bad, msg
  assert "5 LoRA key(s)" not in msg and f"{len(bad)} LoRA key(s)" in msg
  with caplog.at_level(logging.WARNING):
    got = _np(lora.merge_loras(state, [(t, 1.0)], allow_unmatched=True))
  warnings = [r for r in caplog.records
              if r.levelno == logging.WARNING and "match no model parameter" in r.getMessage()]
  assert len(warnings) == 1 and all(k in warnings[0].getMessage() for k in bad)
  want = {k: v.copy() for k, v in ref.items()}
  want["blocks.self_attn.q.kernel"][0] += (u.astype(np.float64) @ d).T
  _close(got, want)


def test_shape_mismatch_and_half_pairs_raise(base):
  state, _ = base
  rng = np.random.default_rng(7)
  d, u = _pair(rng, 2, D + 1, D)
  with pytest.raises(CheckpointError, match=r"blocks\.0\.self_attn\.q\.lora_down\.weight: LoRA \(in 25, out 24\) "
                                            r"vs model kernel \(24, 24\)"):
    lora.merge_loras(state, [({"blocks.0.self_attn.q.lora_down.weight": d,
                               "blocks.0.self_attn.q.lora_up.weight": u}, 1.0)])
  with pytest.raises(CheckpointError, match="without its up tensor"):
    lora.merge_loras(state, [({"blocks.0.self_attn.q.lora_down.weight": d}, 1.0)])
  with pytest.raises(CheckpointError, match=r"norm3\.diff: delta \(25,\)"):
    lora.merge_loras(state, [({"blocks.0.norm3.diff": np.zeros(D + 1, np.float32)}, 1.0)])


def test_export_import_round_trip(base, tmp_path):
  state, ref = base
  rng = np.random.default_rng(8)
  r = 4
  stacked_down = rng.normal(size=(L, r, D)).astype(np.float32)
  stacked_up = rng.normal(size=(L, M, r)).astype(np.float32)
  dq, uq = _pair(rng, r, D, D)
  dh, uh = _pair(rng, r, D, 64)
  path = str(tmp_path / "exported.safetensors")
  keys = lora.save_lora(path, {"blocks.ffn.fc1.kernel": (stacked_down, stacked_up),
                               "blocks.2.cross_attn.q.kernel": (dq, uq),
                               "head.head.kernel": (dh, uh)}, alpha=2.0)
  assert "diffusion_model.blocks.1.ffn.0.lora_down.weight" in keys
  assert "diffusion_model.blocks.2.cross_attn.q.lora_up.weight" in keys
  assert "diffusion_model.head.head.alpha" in keys and len(keys) == 3 * (L + 2)
  reader = checkpoint.SafetensorsReader([path])
  np.testing.assert_array_equal(reader.view("diffusion_model.blocks.2.ffn.0.lora_up.weight"), stacked_up[2])
  got = _np(lora.merge_loras(state, f"{path}:0.25"))
  want = {k: v.copy() for k, v in ref.items()}
  c = 0.25 * 2.0 / r
  for i in range(L):
    want["blocks.ffn.fc1.kernel"][i] += c * (stacked_up[i].astype(np.float64) @ stacked_down[i]).T
  want["blocks.cross_attn.q.kernel"][2] += c * (uq.astype(np.float64) @ dq).T
  want["head.head.kernel"] += c * (uh.astype(np.float64) @ dh).T
  _close(got, want)
  with pytest.raises(UsageError, match="not a Linear kernel"):
    lora.save_lora(str(tmp_path / "x.safetensors"), {"blocks.norm3.scale": (dq, uq)})


def test_sharded_merge_keeps_sharding(base):
  state, _ = base
  mesh = shd.make_mesh("fsdp=4,tensor=2")
  shardings = shd.state_shardings(state, mesh)
  sharded = jax.tree.map(lambda v, s: v.replace(jax.device_put(v.get_value(), s.get_value())), state, shardings,
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
  rng = np.random.default_rng(9)
  t = _lora_a(rng) | {"blocks.2.diff_m": rng.normal(size=(1, 6, D)).astype(np.float32)}
  t |= dict(zip(("blocks.1.ffn.2.lora_down.weight", "blocks.1.ffn.2.lora_up.weight"), _pair(rng, 3, M, D)))
  merged = lora.merge_loras(sharded, [(t, 0.8)])
  plain = _np(lora.merge_loras(state, [(t, 0.8)]))
  for k, v in checkpoint.flat_params(merged).items():
    before = checkpoint.flat_params(sharded)[k].get_value().sharding
    assert v.get_value().sharding.is_equivalent_to(before, v.get_value().ndim), k
    np.testing.assert_allclose(np.asarray(v.get_value()), plain[k], rtol=0, atol=TOL * np.abs(plain[k]).max())
  spec = checkpoint.flat_params(merged)["blocks.ffn.fc2.kernel"].get_value().sharding.spec
  assert "tensor" in str(spec) and "fsdp" in str(spec)


def test_bf16_params_merge_in_float32_and_cast_once(base):
  state, ref = base
  bf = nnx.map_state(lambda p, v: v.replace(v.get_value().astype(jnp.bfloat16)), state)
  rng = np.random.default_rng(10)
  a, b = _lora_a(rng), _lora_b(rng)
  got = checkpoint.flat_params(lora.merge_loras(bf, [(a, 0.5), (b, -1.5)]))["blocks.self_attn.v.kernel"]
  assert got.get_value().dtype == jnp.bfloat16
  w = np.asarray(bf["blocks"]["self_attn"]["v"]["kernel"].get_value(), np.float64)
  p = "diffusion_model.blocks.0.self_attn.v."
  w[0] += 0.5 * 2.0 * (a[p + "lora_up.weight"].astype(np.float64) @ a[p + "lora_down.weight"]).T
  w[0] -= 1.5 * (b["blocks.0.self_attn.v.lora_B.weight"].astype(np.float64) @ b["blocks.0.self_attn.v.lora_A.weight"]).T
  np.testing.assert_array_equal(np.asarray(got.get_value()), w.astype(np.float32).astype(jnp.bfloat16))


def test_module_target_updates_in_place_and_file_spec(tmp_path):
  model = WanDiT(get_config("tiny"), rngs=nnx.Rngs(3))
  before = np.asarray(model.blocks.norm3.scale[...])
  path = tmp_path / "n.safetensors"
  delta = np.arange(D, dtype=np.float32)
  checkpoint.save_tensors(str(path), {"model.diffusion_model.blocks.1.norm3.diff": delta})
  out = lora.merge_loras(model, str(path) + ":2")
  assert out is model
  np.testing.assert_array_equal(np.asarray(model.blocks.norm3.scale[...])[1], before[1] + 2 * delta)
  np.testing.assert_array_equal(np.asarray(model.blocks.norm3.scale[...])[[0, 2]], before[[0, 2]])


def test_parse_lora_specs():
  P = lora.LoraSpec
  assert lora.parse_lora_specs("a.safetensors:0.8, b.safetensors") == [P("a.safetensors", 0.8),
                                                                       P("b.safetensors", 1.0)]
  assert lora.parse_lora_specs(r"C:\loras\x.safetensors:-0.5,C:\loras\y.safetensors") == [
      P(r"C:\loras\x.safetensors", -0.5), P(r"C:\loras\y.safetensors", 1.0)]
  assert lora.parse_lora_specs("") == []
  with pytest.raises(UsageError, match="bad LoRA strength 'x1'"):
    lora.parse_lora_specs("a.safetensors:x1")
  with pytest.raises(UsageError, match="does not exist"):
    lora.read_lora_file("/nonexistent/l.safetensors")
