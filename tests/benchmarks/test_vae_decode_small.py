"""`benchmarks/vae_decode.py --small` end to end on CPU: both modes run, and the JSON line carries XLA's memory plan
(tiled scratch below chunked) next to the allocator fields, which are null where the device has no stats. With the
diffusers reference the JSON line carries its result and a speed-up per mode; without it (`--reference none`, or
torch missing) neither key, and the jax side never imports torch. The reference is built from the jax config
object, so for `wan21` it must be the Wan2.1 VAE (compared like with like on the GPU)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "vae_decode.py")


def _run(*flags, fake_torch=None, tmp_path=None):
  """The script with `flags`; `fake_torch` (the body of a `torch/__init__.py`) shadows the real torch."""
  path = [ROOT] + ([str(tmp_path)] if fake_torch else []) + [os.environ.get("PYTHONPATH", "")]
  if fake_torch:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(fake_torch)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
  env.pop("XLA_FLAGS", None)   # one CPU device, as on a real run
  return subprocess.run([sys.executable, SCRIPT, "--small", *flags], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow
def test_small_run_reports_json(tmp_path):
  # A torch that kills any process importing it: neither the parent nor a jax mode may import torch.
  proc = _run("--reference", "none", fake_torch="import os\nos._exit(97)\n", tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["benchmark"] == "vae_decode"
  assert "reference" not in out and "speedup_vs_diffusers" not in out and "speed-up" not in proc.stdout
  res = out["results"]
  assert set(res) == {"chunked", "tiled"} and all(res.values()), proc.stdout[-3000:]
  for r in res.values():
    assert r["out_shape"] == [1, 17, 64, 64, 3] and r["finite"] is True
    for key in ("sec", "compile_s", "first_call_s", "init_s", "xla_temp_gb", "xla_argument_gb", "xla_output_gb"):
      assert r[key] > 0, key
    # Output: 17 x 64 x 64 x 3 float32.
    assert r["xla_output_gb"] * 2**30 == 17 * 64 * 64 * 3 * 4
    if r["platform"] == "cpu":
      assert r["state_in_use_gb"] is None and r["compile_peak_gb"] is None and r["peak_gb"] == 0.0
  assert res["tiled"]["tile"] == [4, 4] and res["chunked"]["tile"] is None
  assert res["tiled"]["xla_temp_gb"] < res["chunked"]["xla_temp_gb"]
  assert res["tiled"]["xla_argument_gb"] == res["chunked"]["xla_argument_gb"]


@pytest.mark.torch
@pytest.mark.slow
def test_small_run_with_diffusers_reference():
  pytest.importorskip("diffusers")
  proc = _run("--modes", "chunked", "--reference", "diffusers")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  ref, jax_r = out["reference"], out["results"]["chunked"]
  assert ref["framework"] == "diffusers" and ref["finite"] is True and ref["dtype"] == "float32"
  assert ref["latent"] == [1, 16, 5, 8, 8] and ref["out_shape"] == [1, 3, 17, 64, 64]
  assert ref["decode_path"] == "frame-by-frame, causal cache, untiled"
  assert 0 < ref["sec"] < float("inf") and ref["first_call_s"] > 0
  assert set(out["speedup_vs_diffusers"]) == {"chunked"}
  speedup = out["speedup_vs_diffusers"]["chunked"]
  assert speedup > 0 and speedup == pytest.approx(ref["sec"] / jax_r["sec"])
  torch_line = [l for l in proc.stdout.splitlines() if l.lstrip().startswith("diffusers on ")]
  assert len(torch_line) == 1 and "AutoencoderKLWan tiny float32" in torch_line[0], proc.stdout[-3000:]
  assert f"speed-up of wanjax over diffusers: {speedup:.3f}x (chunked)" in proc.stdout


@pytest.mark.slow
def test_default_reference_without_torch_is_a_note(tmp_path):
  proc = _run("--modes", "chunked", fake_torch="raise ImportError('no torch here')\n", tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert "reference" not in out and "speedup_vs_diffusers" not in out and out["results"]["chunked"]["finite"]
  notes = [l for l in proc.stdout.splitlines() if l.startswith("note:")]
  assert len(notes) == 1 and "no diffusers reference" in notes[0] and "no torch here" in notes[0], proc.stdout


def test_bad_reference_is_one_line_argparse_error():
  proc = subprocess.run([sys.executable, SCRIPT, "--reference", "torch"], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 2 and not proc.stdout, proc.stdout + proc.stderr
  errors = [l for l in proc.stderr.splitlines() if "error" in l]
  assert len(errors) == 1 and "error: argument --reference: invalid choice: 'torch'" in errors[0], proc.stderr
  assert "diffusers" in errors[0] and "none" in errors[0]
  assert "Traceback" not in proc.stderr


def test_diffusers_kwargs_of_wan21_are_the_wan21_vae():
  from benchmarks.vae_decode import diffusers_kwargs
  from wanjax.vae import get_config
  kw = diffusers_kwargs(get_config("wan21"))
  arch = {k: kw[k] for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample")}
  assert arch == dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                      temperal_downsample=[False, True, True])
  assert kw["attn_scales"] == [] and kw["dropout"] == 0.0 and len(kw["latents_mean"]) == 16
  tiny = diffusers_kwargs(get_config("tiny"))
  assert (tiny["base_dim"], tiny["dim_mult"]) == (12, [1, 2, 3, 3])


@pytest.mark.torch
@pytest.mark.parametrize("preset", ["tiny", "wan21"])
def test_diffusers_model_has_the_jax_models_parameters(preset):
  """Built from `diffusers_kwargs`, diffusers' model has wanjax's parameter count (encoder and decoder), and its
  config is the Wan2.1 one (no Wan2.2 residual blocks or patchify)."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  import numpy as np
  from flax import nnx
  from benchmarks.vae_decode import diffusers_kwargs
  from wanjax.precision import get_policy
  from wanjax.vae import WanVAE, get_config
  cfg = get_config(preset)
  with torch.device("meta"):
    model = diffusers.AutoencoderKLWan(**diffusers_kwargs(cfg))
  assert getattr(model.config, "is_residual", False) is False and getattr(model.config, "patch_size", None) is None
  assert list(model.config.dim_mult) == list(cfg.dim_mult) and model.config.base_dim == cfg.dim
  n_torch = sum(p.numel() for p in model.parameters())
  state = nnx.state(nnx.eval_shape(lambda: WanVAE(cfg, policy=get_policy("float32"), rngs=nnx.Rngs(0))))
  n_jax = sum(int(np.prod(v.get_value().shape)) for _, v in nnx.to_flat_state(state))
  assert n_torch == n_jax == {"tiny": 1_253_071, "wan21": 126_892_531}[preset]


@pytest.mark.slow
def test_conv_forms_and_profile(tmp_path):
  """`--conv3d fold2d --upsample subpixel --profile 1`: the forms are recorded, the subpixel upsample shows as
  less conv work than the default form (counted from the jaxpr), and the trace is summed by kind of kernel."""
  runs = {}
  for forms in ((), ("--conv3d", "fold2d", "--upsample", "subpixel", "--profile", "1")):
    proc = _run("--modes", "chunked", "--reference", "none", *forms)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs[forms[1] if forms else "default"] = json.loads(proc.stdout.strip().splitlines()[-1])["results"]["chunked"]
  base, alt = runs["default"], runs["fold2d"]
  assert (base["conv3d"], base["upsample"], alt["conv3d"], alt["upsample"]) == ("conv3d", "repeat", "fold2d",
                                                                                  "subpixel")
  assert 0 < alt["flops"] < base["flops"] and abs(alt["tflops"] - alt["flops"] / alt["sec"] / 1e12) < 1e-9
  assert "by_op" not in base and alt["profile_calls"] == 1
  # On CPU the kinds are XLA:CPU's (convolution, XNNPACK fusions, loop fusions, copies); the rows cover the trace.
  assert len({r["op"] for r in alt["by_op"]}) > 1, alt["by_op"]
  assert abs(sum(r["ms"] for r in alt["by_op"]) - alt["kernel_ms_per_block"]) < 1e-6 * alt["kernel_ms_per_block"]
