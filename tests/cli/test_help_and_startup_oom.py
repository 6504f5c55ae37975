"""Two corners of the CLIs' exit-code rule (infer/cli.py): a help request is no failure (`--help` / `--helpfull`
exit 0 with the help on stdout; absl exits 1), and an out-of-memory while `infer.forward` runs or while
`infer.serve` loads and warms up its models is one `error:` line with exit 1 (formerly XLA's traceback), as in
`infer.sample` (tests/cli/test_out_of_memory.py). All commands run at once, in parallel."""

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XLA_OOM = ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 31.56GiB with allocator GPU_0_bfc on "
           "device 0.\nCurrent allocation summary follows.\nBin (256): Total Chunks: 12, Chunks in use: 12. 3.0KiB")

# `python -m infer.forward`, its VAE loader raising XLA's out-of-memory error.
_FORWARD = f"""
import jax
import wanjax.vae.load
def oom(*args, **kwargs):
  raise jax.errors.JaxRuntimeError({XLA_OOM!r})
wanjax.vae.load.load_vae = oom
from infer import forward
forward.run()
"""

# `python -m infer.serve`, its pipeline's model loading raising XLA's out-of-memory error.
_SERVE = f"""
import runpy
import jax
from infer import sample
def oom(self, plan):
  raise jax.errors.JaxRuntimeError({XLA_OOM!r})
sample.Pipeline.load = oom
runpy.run_module("infer.serve", run_name="__main__", alter_sys=True)
"""

VAE = os.path.join(ROOT, "wanjax", "toyworld", "checkpoints", "vae")
COMMANDS = {
    "sample_help": ["-m", "infer.sample", "--help"],
    "export_help": ["-m", "train.export", "--help"],
    "forward_helpfull": ["-m", "infer.forward", "--helpfull"],
    "forward_oom": ["{tmp}/forward.py", "--component=vae_decode", f"--model={VAE}", "--inputs={tmp}/latent.npz",
                    "--out={tmp}/video.npz"],
    "serve_oom": ["{tmp}/serve.py", "--config=configs/sample/tiny.py", "--port=0"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("help_oom")
  (tmp / "forward.py").write_text(_FORWARD)
  (tmp / "serve.py").write_text(_SERVE)
  np.savez(tmp / "latent.npz", latent=np.zeros((1, 16, 1, 2, 2), np.float32))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  procs = {name: subprocess.Popen([sys.executable] + [a.format(tmp=tmp) for a in args], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, args in COMMANDS.items()}
  out = {}
  for name, p in procs.items():
    stdout, stderr = p.communicate(timeout=120)
    out[name] = (p.returncode, stdout, stderr)
  return tmp, out


@pytest.mark.parametrize("name,flags", [
    ("sample_help", ["--config: Sampling preset (configs/sample/<preset>.py[:arg])"]),
    ("export_help", ["--config: The training config of the run.", "--workdir: The training run's --workdir.",
                     "--[no]ema: Export the generator's EMA shadow."]),
    ("forward_helpfull", ["--component: which model to run: dit, t5, vae_encode, vae_decode, clip",
                          "--[no]helpfull: show full help"]),
])
def test_help_exits_0_and_lists_the_module_flags(results, name, flags):
  _, out = results
  rc, stdout, stderr = out[name]
  assert rc == 0, stderr[-2000:]
  lines = [ln.strip() for ln in stdout.splitlines()]
  for flag in flags:
    assert any(ln.startswith(flag) for ln in lines), (flag, stdout[-3000:])
  assert "error:" not in stderr and "Traceback" not in stderr, stderr[-2000:]


@pytest.mark.parametrize("name,advice", [
    ("forward_oom", "Try --dtype=bfloat16, --quant=int8 or fp8 (DiT), or smaller inputs (batch, frames, height x "
                    "width)."),
    ("serve_oom", "Try --config.dtype=bf16 or --config.quant=int8 (2 or 1 bytes per DiT block weight instead of 4)"),
])
def test_out_of_memory_at_startup_is_one_line_exit_1(results, name, advice):
  tmp, out = results
  rc, _, stderr = out[name]
  errors = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
  assert rc == 1, stderr[-3000:]
  assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr[-3000:]
  assert errors[0].startswith("error: out of memory on ") and ": XLA could not allocate 31.56GiB" in errors[0]
  assert advice in errors[0], errors[0]
  assert "Traceback" not in stderr and "Bin (256)" not in stderr, stderr[-3000:]
  assert not (tmp / "video.npz").exists()
