"""`dmd.teacher_param_dtype`: the frozen teacher held in bf16 halves its bytes and its forward on bf16 weights stays
within TEACHER_RTOL of the fp32 one; "bf16_kernels" (the default) stores only the kernels its bf16 matmuls read cast
anyway, so its forward is bit-identical."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.train import dmd_smoke
from train import distill
from wanjax import sharding as shd
from wanjax.errors import UsageError

TEACHER_RTOL = 1e-2   # bf16 weights in a fp32 forward of the tiny smoke DiT: measured 2.7e-3


def _teacher(teacher_dtype, precision=None):
  """State facts and the teacher's velocity on a fixed input, for one `dmd.teacher_param_dtype` (and the models'
  precision policy, default the smoke config's float32)."""
  c = dmd_smoke.get_config()
  c.dmd.teacher_param_dtype = teacher_dtype
  for role in ("generator", "critic", "teacher") if precision else ():
    c.models[role].precision = precision
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
           "teacher_dtype_of": {jax.tree_util.keystr(p): x.dtype
                                for p, x in jax.tree_util.tree_flatten_with_path(state.teacher)[0]},
           "generator_dtypes": {x.dtype for x in jax.tree.leaves(state.generator.params)}}
    # The forward on the stored params. Random init zeroes the output head (the output would be 0 either way),
    # so the float32 init gets the same small perturbation in every run, and is then stored in the teacher's
    # dtypes as the trainer stores loaded weights.
    init = jax.jit(setup.built["teacher"].random_init)()
    keys = iter(jax.random.split(jax.random.key(1), len(teacher)))
    params = jax.tree.map(lambda p, stored: (p + 0.05 * jax.random.normal(next(keys), p.shape)).astype(stored.dtype),
                          init, state.teacher)
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


def test_bf16_kernel_teacher_is_bit_identical_and_smaller():
  """Under the bf16 policy the default stores the bf16 matmuls' kernels in bf16: same teacher output to the bit
  (the perturbed weights are rounded to bf16 before the forward casts them anyway), fewer bytes, float32 elsewhere."""
  ref, low = _teacher("float32", "bf16"), _teacher("bf16_kernels", "bf16")
  assert ref["teacher_dtypes"] == {jnp.dtype(jnp.float32)}
  half = sorted(k for k, d in low["teacher_dtype_of"].items() if d == jnp.bfloat16)
  assert "['blocks']['ffn']['fc1']['kernel']" in half and "['patch_embedding']['kernel']" in half, half
  assert all(k.endswith("['kernel']") for k in half), half
  for k in ("['time_projection']['fc']['kernel']", "['head']['head']['kernel']", "['blocks']['ffn']['fc1']['bias']"):
    assert low["teacher_dtype_of"][k] == jnp.float32, k
  assert ref["teacher_bytes"] * 0.5 < low["teacher_bytes"] < ref["teacher_bytes"] * 0.75
  assert low["generator_dtypes"] == {jnp.dtype(jnp.float32)}
  np.testing.assert_array_equal(low["v"], ref["v"])
  # Under the smoke config's float32 policy nothing is read cast, so nothing changes.
  assert _teacher("bf16_kernels")["teacher_dtypes"] == {jnp.dtype(jnp.float32)}


def test_unknown_teacher_dtype_is_a_usage_error():
  c = dmd_smoke.get_config()
  c.dmd.teacher_param_dtype = "float16"
  with pytest.raises(UsageError, match="teacher_param_dtype"):
    distill.build_dmd(c, "", shd.make_mesh(c.mesh), shd.RULES)


@pytest.mark.parametrize("precision, halved", [("bf16", True), ("float32", False)])
def test_built_model_frozen_copy_is_bit_identical(precision, halved):
  """`BuiltModel.frozen` (every frozen teacher: DMD's default, CFG and step distillation): the half-precision
  matmuls' kernels stored cast, the rest copied; the model's output does not move by a bit."""
  from configs.train_common import model
  from train.models import build_dit
  built = build_dit(model("tiny", precision=precision, remat="none"), seed=0, mesh=shd.make_mesh("data=1"))
  keys = iter(jax.random.split(jax.random.key(2), 1000))
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(next(keys), p.shape), jax.jit(built.random_init)())
  frozen = built.frozen(params)
  half = {jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(frozen)[0] if x.dtype != jnp.float32}
  assert bool(half) == halved and all(k.endswith("['kernel']") for k in half), half
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((1, 3, 4, 6, built.cfg.out_dim)), jnp.float32)
  ctx = jnp.asarray(rng.standard_normal((1, 7, built.cfg.text_dim)), jnp.float32)
  t = jnp.asarray([400.0], jnp.float32)
  apply = jax.jit(built.fn.apply)
  np.testing.assert_array_equal(np.asarray(apply(frozen, x, t, ctx)), np.asarray(apply(params, x, t, ctx)))
