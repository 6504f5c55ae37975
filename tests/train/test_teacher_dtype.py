"""`dmd.teacher_param_dtype`: the frozen teacher held in bf16 halves its bytes; its forward on bf16 weights stays
within TEACHER_RTOL of the fp32 one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.train import dmd_smoke
from train import distill
from wanjax import sharding as shd
from wanjax.errors import UsageError

TEACHER_RTOL = 1e-2   # bf16 weights in a fp32 forward of the tiny smoke DiT: measured 2.7e-3


def _teacher(teacher_dtype):
  """State facts and the teacher's velocity on a fixed input, for one `dmd.teacher_param_dtype`."""
  c = dmd_smoke.get_config()
  c.dmd.teacher_param_dtype = teacher_dtype
  mesh = shd.make_mesh(c.mesh)
  setup = distill.build_dmd(c, "", mesh, shd.RULES)
  cfg = setup.built["teacher"].cfg
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, *c.data.latent_shape, cfg.out_dim)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((1, cfg.text_len, cfg.text_dim)), jnp.float32)
  t = jnp.asarray([700.0], jnp.float32)
  with shd.activate(mesh, shd.RULES):
    state = setup.create()
    teacher = jax.tree.leaves(state.teacher)
    out = {"teacher_dtypes": {x.dtype for x in teacher}, "teacher_bytes": sum(x.nbytes for x in teacher),
           "generator_dtypes": {x.dtype for x in jax.tree.leaves(state.generator.params)}}
    # The forward on the stored params. Random init zeroes the output head (the output would be 0 either way),
    # so every weight gets the same small perturbation in both runs before it is stored in the teacher's dtype.
    keys = iter(jax.random.split(jax.random.key(1), len(teacher)))
    dtype = teacher[0].dtype
    params = jax.tree.map(lambda p: (p.astype(jnp.float32) + 0.05 * jax.random.normal(next(keys), p.shape))
                          .astype(dtype), state.teacher)
    v = jax.jit(setup.built["teacher"].fn.apply)(params, x, t, ctx)
    out["v"] = np.asarray(jax.device_get(v), np.float32)
  return out


def test_bf16_teacher_halves_its_bytes_and_keeps_its_output():
  ref, low = _teacher("float32"), _teacher("bfloat16")
  assert ref["teacher_dtypes"] == {jnp.dtype(jnp.float32)}
  assert low["teacher_dtypes"] == {jnp.dtype(jnp.bfloat16)}
  assert low["teacher_bytes"] * 2 == ref["teacher_bytes"]
  assert low["generator_dtypes"] == ref["generator_dtypes"] == {jnp.dtype(jnp.float32)}   # trained: stay fp32
  err = np.max(np.abs(low["v"] - ref["v"])) / np.max(np.abs(ref["v"]))
  assert 0 < err <= TEACHER_RTOL, err      # > 0: the bf16 weights really are what the forward used


def test_unknown_teacher_dtype_is_a_usage_error():
  c = dmd_smoke.get_config()
  c.dmd.teacher_param_dtype = "float16"
  with pytest.raises(UsageError, match="teacher_param_dtype"):
    distill.build_dmd(c, "", shd.make_mesh(c.mesh), shd.RULES)
