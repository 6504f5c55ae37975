"""`train.state.guarded_update`: the optimiser step every trainer uses, kept only when the loss, the gradient norm
and every updated parameter are finite. What it keeps equals a plain update; what it skips leaves the trainee
bit-identical; and it does not hold the old and the new trainee at once (the DMD step on an 80 GB H100 ran out
of memory when it did)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import state as st


def _trainee(tx, ema=True):
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"a": jax.random.normal(k[0], (6, 5)), "b": {"c": jax.random.normal(k[1], (7,))}}
  return st.init_trainee(params, tx, ema=ema)


def _grads(old, scale=1.0):
  return jax.tree.map(lambda p: scale * jnp.cos(p), old.params)


def test_kept_update_equals_a_plain_one_and_post_runs_on_it():
  tx = st.make_optimizer(lr=1e-2, clip=1.0)
  old = _trainee(tx)
  grads = _grads(old)
  post = lambda new, o: new.replace(ema=jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p, new.ema, new.params))
  new, ok, gnorm = jax.jit(lambda o, g: st.guarded_update(o, jnp.float32(1.0), g, tx, post))(old, grads)
  ref, ref_norm = st.apply_updates(old, grads, tx)
  ref = post(ref, old)
  assert bool(ok)
  np.testing.assert_allclose(gnorm, ref_norm, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert not np.allclose(new.params["a"], old.params["a"])


def test_skipped_update_leaves_everything_as_it_was():
  tx = st.make_optimizer(lr=1e-2, clip=1.0)
  old = _trainee(tx)
  post_ran = []
  post = lambda new, o: post_ran.append(1) or new.replace(ema=jax.tree.map(jnp.zeros_like, new.ema))
  cases = {"loss": (jnp.float32(np.nan), _grads(old)), "grad": (jnp.float32(1.0), _grads(old, np.inf))}
  for name, (loss, grads) in cases.items():
    new, ok, _ = st.guarded_update(old, loss, grads, tx, post)
    assert not bool(ok), name
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
      np.testing.assert_array_equal(a, b)
  # Params that overflow from a finite gradient (absurd learning rate) are skipped too.
  tx_big = st.make_optimizer(lr=1e40, clip=0.0)
  old_big = _trainee(tx_big)
  new, ok, gnorm = st.guarded_update(old_big, jnp.float32(1.0), _grads(old_big), tx_big)
  assert np.isfinite(gnorm) and not bool(ok)
  np.testing.assert_array_equal(new.params["a"], old_big.params["a"])


def test_old_and_new_trainee_are_not_held_at_once():
  """XLA's plan (CPU) for one donated, guarded step on a trainee of 4 x 4 MiB params + AdamW + EMA (64 MiB):
  measured 32 MiB of temporaries, the gradients (16 MiB) and one params-sized set. Choosing between a fully built
  new trainee and the old one with `jnp.where`, as before, needed 52 MiB."""
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  params = {f"w{i}": jnp.ones((1024, 1024), jnp.float32) for i in range(4)}
  state = st.TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0),
                        generator=st.init_trainee(params, tx, ema=True))

  def loss_fn(p):
    return sum(jnp.sum(jnp.sin(v) ** 2) for v in p.values()), {}

  step = jax.jit(lambda s: st.guarded_generator_step(s, loss_fn, tx, "loss"), donate_argnums=0)
  temp = step.lower(jax.eval_shape(lambda: state)).compile().memory_analysis().temp_size_in_bytes
  trainee = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.generator))
  assert temp <= 0.6 * trainee, (temp / 2**20, trainee / 2**20)
