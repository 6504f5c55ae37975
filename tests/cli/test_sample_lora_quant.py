"""`infer.sample` / `infer.forward` with LoRA files (`--config.lora`, `--lora`) and weight-only quantisation
(`--config.quant`, `--quant`) on the tiny random DiT (2 UniPC steps, 5 frames, 32x32, injected noise).

References are merged by hand in float64 NumPy, independently of `wanjax.lora`'s key resolution: in the JAX
kernel layout for the sampler (`W[layer] += s·(alpha/r)·(up @ down).T`), in the original torch layout before
conversion for the forward CLI. The sampler runs in-process (`infer.sample.run`) so the compiled loop is reused.
"""

import json
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.sample import tiny
from infer import forward as fwd_cli
from infer import sample as S
from tests.conftest import max_rel_err
from tests.converters.dit_fixtures import quantize_lightx2v, random_original
from wanjax import checkpoint, lora, sampling, sharding
from wanjax.dit.config import PRESETS
from wanjax.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL_SAME = 1e-6    # the by-hand pipeline without a merge vs the CLI: the same program on the same inputs
TOL_LORA = 1e-5    # device float32 merge vs float64 NumPy merge, propagated through 2 steps (latents)
TOL_FWD = 1e-5     # forward CLI with --lora vs the torch-layout merge converted (v); fp32 both ways
# int8 weight-only (per-channel absmax/127) vs float32, relative to max|latent|. Measured: 3.3e-3.
TOL_INT8 = 1e-2
D, M, L = 24, 40, 3   # tiny DiT: dim, ffn_dim, layers
A_ALPHA = 1.5


def _pair(rng, r, din, dout, lead=()):
  return (rng.standard_normal(lead + (r, din)).astype(np.float32),
          rng.standard_normal(lead + (dout, r)).astype(np.float32))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """LoRA A (written by `save_lora`, with alpha), LoRA B (hand-built PEFT/ComfyUI keys + a `diff_b`), LoRA C
  (B plus a key that matches nothing), the init noise, and each file's expected deltas per strength 1."""
  d = tmp_path_factory.mktemp("lora_quant")
  rng = np.random.default_rng(0)
  np.save(d / "noise.npy", rng.standard_normal((16, 2, 4, 4)).astype(np.float32))
  q_down, q_up = _pair(rng, 3, D, D, (L,))      # every layer's self_attn.q, rank 3
  f_down, f_up = _pair(rng, 2, D, M)            # layer 1's ffn.0 (fc1), rank 2
  lora.save_lora(str(d / "a.safetensors"), {"blocks.self_attn.q.kernel": (q_down, q_up),
                                            "blocks.1.ffn.fc1.kernel": (f_down, f_up)}, alpha=A_ALPHA)
  o_down, o_up = _pair(rng, 4, D, D)            # layer 2's cross_attn.o, rank 4, no alpha
  diff_b = rng.standard_normal(D).astype(np.float32)   # layer 0's ffn.2 bias
  b = {"diffusion_model.blocks.2.cross_attn.o.lora_A.weight": o_down,
       "diffusion_model.blocks.2.cross_attn.o.lora_B.weight": o_up,
       "diffusion_model.blocks.0.ffn.2.diff_b": diff_b}
  checkpoint.save_tensors(str(d / "b.safetensors"), b)
  checkpoint.save_tensors(str(d / "c.safetensors"), {**b, "diffusion_model.blocks.0.self_attn.qq.lora_A.weight":
                                                      o_down, "diffusion_model.blocks.0.self_attn.qq.lora_B.weight": o_up})
  f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
  # (jax param path, layer, delta in the JAX layout) and (torch key, delta in the torch layout).
  jax_deltas = {
      "a": [("blocks.self_attn.q.kernel", l, A_ALPHA / 3 * (f64(q_up[l]) @ f64(q_down[l])).T) for l in range(L)]
      + [("blocks.ffn.fc1.kernel", 1, A_ALPHA / 2 * (f64(f_up) @ f64(f_down)).T)],
      "b": [("blocks.cross_attn.o.kernel", 2, (f64(o_up) @ f64(o_down)).T), ("blocks.ffn.fc2.bias", 0, f64(diff_b))],
  }
  torch_deltas = {
      "a": [(f"blocks.{l}.self_attn.q.weight", A_ALPHA / 3 * f64(q_up[l]) @ f64(q_down[l])) for l in range(L)]
      + [("blocks.1.ffn.0.weight", A_ALPHA / 2 * f64(f_up) @ f64(f_down))],
      "b": [("blocks.2.cross_attn.o.weight", f64(o_up) @ f64(o_down)), ("blocks.0.ffn.2.bias", f64(diff_b))],
  }
  return dict(dir=d, jax=jax_deltas, torch=torch_deltas)


def _config(files, name, **override):
  d = files["dir"]
  c = tiny.get_config("steps=2")
  c.size, c.output_dir, c.output_name = "32*32", str(d / "out"), name
  c.init_noise, c.save_latents = str(d / "noise.npy"), str(d / f"{name}.npy")
  c.update(override)
  return c


def _cli(c):
  side = S.run(c)
  return np.load(c.save_latents), side


def _by_hand(c, merges):
  """Latents of the same run with `merges` [(param, layer, delta)] added to the CLI-built DiT in NumPy."""
  plan = S.check(c)
  mesh = sharding.make_mesh(c.mesh)
  ctx, neg = S.encode_text(c, plan, mesh)
  dit = S.build_dit(c, plan, mesh)
  new = {k: np.asarray(v.get_value(), np.float64) for k, v in checkpoint.flat_params(nnx.state(dit, nnx.Param)).items()}
  for path, layer, delta in merges:
    new[path][layer] += delta
  state = nnx.map_state(lambda p, v: v.replace(jnp.asarray(new[".".join(map(str, p))], v.get_value().dtype)),
                        nnx.state(dit, nnx.Param))
  nnx.update(dit, state)
  denoise_fn, params = sampling.model_denoiser(dit)
  cond, uncond = S.conditions(ctx, neg, c.cfg_scale)
  with sharding.activate(mesh):
    lat = sampling.sample(denoise_fn, jnp.asarray(plan.init_noise), sigmas=plan.sigmas, timesteps=plan.timesteps,
                          solver=c.solver, cfg_scale=c.cfg_scale, cond=cond, uncond=uncond,
                          rng=jax.random.split(jax.random.key(c.seed))[1], params=params)
  return np.asarray(lat).transpose(0, 4, 1, 2, 3)


def _scaled(files, **strengths):
  return [(p, l, s * dl) for name, s in strengths.items() for p, l, dl in files["jax"][name]]


def test_one_lora_equals_manual_merge(files):
  base, _ = _cli(_config(files, "base"))
  assert max_rel_err(_by_hand(_config(files, "base"), []), base) <= TOL_SAME   # the by-hand pipeline is the CLI's
  got, side = _cli(_config(files, "a", lora=f"{files['dir'] / 'a.safetensors'}:0.8"))
  want = _by_hand(_config(files, "a"), _scaled(files, a=0.8))
  assert max_rel_err(got, want) <= TOL_LORA
  assert max_rel_err(got, base) > 100 * TOL_LORA, "the LoRA must change the latents"
  assert side["config"]["lora"].endswith("a.safetensors:0.8")


def test_two_loras_add(files):
  d = files["dir"]
  got, _ = _cli(_config(files, "ab", lora=f"{d / 'a.safetensors'}:0.8,{d / 'b.safetensors'}:-1.3"))
  want = _by_hand(_config(files, "ab"), _scaled(files, a=0.8, b=-1.3))
  assert max_rel_err(got, want) <= TOL_LORA
  only_a = _by_hand(_config(files, "ab"), _scaled(files, a=0.8))
  assert max_rel_err(got, only_a) > 100 * TOL_LORA, "the second LoRA must count"


def test_unmatched_key_exits_2_listing_it(files, tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-m", "infer.sample", "--config=configs/sample/tiny.py:steps=2",
                      f"--config.lora={files['dir'] / 'c.safetensors'}", f"--config.output_dir={out}"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
  assert len(lines) == 1, r.stderr[-2000:]
  assert "2 LoRA key(s) match no model parameter" in lines[0]
  assert "diffusion_model.blocks.0.self_attn.qq.lora_A.weight" in lines[0]
  assert not out.exists()


def test_unmatched_key_warns_with_the_flag(files, caplog):
  caplog.set_level(logging.WARNING)
  c = _config(files, "c", lora=str(files["dir"] / "c.safetensors"), lora_allow_unmatched=True)
  got, _ = _cli(c)
  assert any("skipping 2 LoRA key(s)" in r.getMessage() and "self_attn.qq" in r.getMessage()
             for r in caplog.records)
  assert max_rel_err(got, _by_hand(_config(files, "c"), _scaled(files, b=1.0))) <= TOL_LORA


@pytest.mark.parametrize("spec,message", [
    ("x.safetensors:strong", "bad LoRA strength 'strong'"),
    ("/nonexistent/x.safetensors:0.5", "does not exist"),
])
def test_bad_lora_specs(files, spec, message):
  with pytest.raises(UsageError, match=re.escape(message)):
    S.check(_config(files, "bad", lora=spec))
  with pytest.raises(UsageError, match=re.escape("quant='int4'; valid: none, int8, fp8")):
    S.check(_config(files, "bad", quant="int4"))


def test_int8_after_lora_within_quantisation_error(files):
  """LoRA merged first, then int8: latents within TOL_INT8 of the float32 hand merge; weights are smaller."""
  spec = f"{files['dir'] / 'a.safetensors'}:0.8"
  got, side = _cli(_config(files, "a_int8", lora=spec, quant="int8"))
  _, side32 = _cli(_config(files, "a32", lora=spec))
  want = _by_hand(_config(files, "a32"), _scaled(files, a=0.8))
  err = max_rel_err(got, want)
  assert 0 < err <= TOL_INT8, err
  assert side["dit_weight_bytes"] < 0.75 * side32["dit_weight_bytes"]


# ------------------------------------------------------------------------------------------- infer.forward

@pytest.fixture(scope="module")
def dit_dirs(files):
  """Converted tiny DiTs: plain; with A:0.8 + B:-1.3 merged in the torch layout; LightX2V int8 kept quantised
  (`--keep-quantized`) and its dequantised float32 twin."""
  from converters.convert import convert_checkpoint
  d = files["dir"]
  sd = random_original(PRESETS["tiny"], seed=5)
  merged = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  for name, s in (("a", 0.8), ("b", -1.3)):
    for key, delta in files["torch"][name]:
      merged[key] += s * delta
  q, deq = quantize_lightx2v(sd, "int8")
  out = {}
  for name, tensors in (("plain", sd), ("merged", {k: v.astype(np.float32) for k, v in merged.items()}),
                        ("int8", q), ("deq", {**sd, **deq})):
    (d / f"src_{name}").mkdir()
    checkpoint.save_tensors(str(d / f"src_{name}" / "dit.safetensors"), tensors)
    (d / f"src_{name}" / "config.json").write_text(json.dumps(
        {"_class_name": "WanModel", "dim": D, "num_heads": 2, "num_layers": L, "text_len": 7}))
    convert_checkpoint(str(d / f"src_{name}" / "dit.safetensors"), str(d / name), progress=False,
                       keep_quantized=name == "int8")
    out[name] = str(d / name)
  rng = np.random.default_rng(6)
  np.savez(d / "in.npz", x=rng.standard_normal((1, 16, 2, 4, 6)).astype(np.float32), t=np.array([700]),
           context=rng.standard_normal((1, 5, 20)).astype(np.float32))
  return out


def test_forward_lora_equals_manual_merge(files, dit_dirs):
  d = files["dir"]
  want = fwd_cli.forward("dit", dit_dirs["merged"], str(d / "in.npz"), str(d / "want.npz"))["v"]
  spec = f"{d / 'a.safetensors'}:0.8,{d / 'b.safetensors'}:-1.3"
  got = fwd_cli.forward("dit", dit_dirs["plain"], str(d / "in.npz"), str(d / "got.npz"), lora=spec)["v"]
  plain = fwd_cli.run_dit(dit_dirs["plain"], dict(np.load(d / "in.npz")))["v"]
  assert max_rel_err(got, want) <= TOL_FWD
  assert max_rel_err(plain, want) > 100 * TOL_FWD
  with pytest.raises(UsageError, match=re.escape("self_attn.qq.lora_A.weight")):
    fwd_cli.run_dit(dit_dirs["plain"], dict(np.load(d / "in.npz")), lora=str(d / "c.safetensors"))
  assert oct(os.stat(d / "got.npz").st_mode & 0o777) == oct(0o666 & ~_umask())


def test_forward_stored_int8_loads_as_is(files, dit_dirs):
  """A `--keep-quantized` dir runs on its stored int8 values (= the float32 model of the dequantised weights, up to
  float32 rounding: the scale multiplies after the matmul); another mode or a LoRA is refused."""
  d = files["dir"]
  inputs = dict(np.load(d / "in.npz"))
  want = fwd_cli.run_dit(dit_dirs["deq"], inputs)["v"]
  got = fwd_cli.run_dit(dit_dirs["int8"], inputs, quant="int8")["v"]
  assert max_rel_err(got, want) <= TOL_FWD
  with pytest.raises(UsageError, match=re.escape("quant='fp8' but")):
    fwd_cli.run_dit(dit_dirs["int8"], inputs, quant="fp8")
  with pytest.raises(UsageError, match="which a LoRA cannot be merged into"):
    fwd_cli.run_dit(dit_dirs["int8"], inputs, lora=str(d / "a.safetensors"))


def _umask():
  mask = os.umask(0o022)
  os.umask(mask)
  return mask
