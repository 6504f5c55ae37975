"""`config.vae_dtype` of `infer.sample`: checked at the edge, passed to the VAE loader, recorded in the sidecar.

The numerics of the bf16 decode are tested in tests/vae/test_vae_dtype.py; here only the plumbing.
"""

import json
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_default_is_float32_like_the_reference():
  from configs.sample import lightx2v_4step, t2v_14b, tiny, toyworld
  for preset in (lightx2v_4step, t2v_14b, tiny, toyworld):
    assert preset.get_config().vae_dtype == "float32", preset.__name__


@pytest.mark.parametrize("value", ["fp16", "bfloat16", "float16", ""])
def test_invalid_vae_dtype_is_a_usage_error(value):
  from configs.sample import tiny
  from infer.sample import check
  from wanjax.errors import UsageError
  c = tiny.get_config()
  c.vae_dtype = value
  with pytest.raises(UsageError, match=re.escape(f"config.vae_dtype={value!r} is not valid; valid: float32, bf16")):
    check(c)


@pytest.mark.parametrize("vae_dtype", ["float32", "bf16"])
def test_build_vae_loads_under_the_policy(vae_dtype):
  """The converted toy-world VAE directory (load_vae) and the random tiny demo VAE both get the policy; the
  weights stay float32 either way."""
  from configs.sample import tiny, toyworld
  from infer.sample import build_vae
  for preset in (toyworld, tiny):
    c = preset.get_config()
    c.vae_dtype = vae_dtype
    vae = build_vae(c, None)
    assert vae.policy.name == vae_dtype, preset.__name__
    want = jnp.bfloat16 if vae_dtype == "bf16" else jnp.float32
    assert vae.policy.compute_dtype == want
    dtypes = {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(vae, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}


def test_cli_bf16_vae_runs_and_is_recorded(tmp_path):
  """The locked CLI config accepts --config.vae_dtype=bf16; the sidecar records it."""
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-m", "infer.sample", "--config=configs/sample/tiny.py:steps=1",
                      "--config.vae_dtype=bf16", "--config.cfg_scale=1.0", f"--config.output_dir={out}",
                      "--config.output_name=clip"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  side = json.loads((out / "clip.json").read_text())
  assert side["vae_dtype"] == "bf16" and side["config"]["vae_dtype"] == "bf16"
  assert os.path.getsize(out / "clip.mp4") > 0
