"""The train state: ONE explicit pytree, its optimisers, EMA, and the params <-> model adapter.

Mirrors the state the Self-Forcing trainer keeps (spec `distillation.md` §1.6, `trainer/distillation.py`):
generator params + AdamW state (+ an fp32 EMA shadow), critic params + AdamW state, frozen teacher params (no
optimiser state), the step counter (critic updates) and the RNG key. Orbax saves exactly this pytree.

Params are nested dicts of arrays (`nnx.to_pure_dict`), so optax, orbax and tree maths see plain arrays; the
`ModelFn` adapter merges them back into the NNX module inside jitted functions.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from wanjax.errors import UsageError


@flax.struct.dataclass
class Trainee:
  """One trained network: fp32 master params, optimiser state, optional fp32 EMA shadow."""
  params: Any
  opt_state: Any
  ema: Any = None


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # int32 scalar: completed steps (SF counts critic updates)
  rng: jax.Array             # uint32[2] raw key; step keys are fold_in(rng, step)
  generator: Trainee
  critic: Trainee | None = None
  teacher: Any = None        # frozen params, no optimiser state


def make_optimizer(*, lr, b1=0.0, b2=0.999, eps=1e-8, weight_decay=0.01, clip=10.0):
  """`clip_by_global_norm(clip)` then AdamW with decoupled decay on every param, constant LR (§1.6)."""
  if lr <= 0:
    raise UsageError(f"learning rate {lr} must be > 0")
  parts = [optax.clip_by_global_norm(clip)] if clip and clip > 0 else []
  parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts)


def init_trainee(params, tx, *, ema=False) -> Trainee:
  """Fresh optimiser state; the EMA slot (when enabled) exists from the start so the pytree shape is static."""
  params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  shadow = jax.tree.map(jnp.copy, params) if ema else None
  return Trainee(params=params, opt_state=tx.init(params), ema=shadow)


def ema_update(ema, params, decay):
  """ema <- decay * ema + (1 - decay) * params, in fp32."""
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p.astype(jnp.float32), ema, params)


def ema_step(trainee: Trainee, old_params, step, *, decay, start, every):
  """EMA bookkeeping after a generator update at counter `step` (§1.3, §1.6).

  The reference creates the EMA when the counter reaches `start` from the weights present then (those after
  the last generator update) and afterwards updates it after every generator step. Generator steps happen every
  `every` counts, so the first one at or after `start` (start <= step < start + every) first re-initialises the
  shadow from `old_params`. Before `start` the shadow is left untouched.
  """
  if trainee.ema is None:
    return trainee
  first = (step >= start) & (step < start + every)
  base = jax.tree.map(lambda e, p: jnp.where(first, p, e), trainee.ema, old_params)
  new = ema_update(base, trainee.params, decay)
  ema = jax.tree.map(lambda n, e: jnp.where(step >= start, n, e), new, trainee.ema)
  return trainee.replace(ema=ema)


def apply_updates(trainee: Trainee, grads, tx):
  """One optimiser step. Returns (trainee, global grad norm before clipping)."""
  updates, opt_state = tx.update(grads, trainee.opt_state, trainee.params)
  params = optax.apply_updates(trainee.params, updates)
  return trainee.replace(params=params, opt_state=opt_state), optax.tree.norm(grads)


def update_ok(loss, gnorm, new: Trainee):
  """Whether an update may be kept: a finite loss and gradient norm AND finite updated params. A finite
  gradient can still overflow the params (e.g. an absurd learning rate), and such a step must count as
  non-finite, or the loop would checkpoint inf params as the last good state."""
  return jnp.isfinite(loss) & jnp.isfinite(gnorm) & all_finite(new.params)


def guarded_update(old: Trainee, loss, grads, tx, post=None):
  """One optimiser step, kept only where `update_ok` holds. Returns (trainee, ok, global grad norm).

  `post(new, old)`, if given, finishes a kept update (the EMA bookkeeping). The updated params are first built
  only to be checked for finiteness; the update itself then runs inside `lax.cond`, so the new trainee can
  mostly overwrite the donated old one in place. Building the whole new trainee and then choosing between it and
  the old one (`jnp.where`) holds both at once: for the 1.3B DMD generator (params,
  AdamW moments, EMA) XLA's buffer assignment (CPU) gives 25.0 GiB of temporaries that way against 15.9 GiB here
  (critic step 17.2 -> 10.6 GiB); the fp32-teacher DMD step ran out of memory on an 80 GB H100 with the former.
  `ok` is computed from the same update; the kept values equal a plain unguarded update (the old `jnp.where` form
  rounded the EMA 1 ulp differently after a few steps: another fusion)."""
  probe, gnorm = apply_updates(old, grads, tx)
  ok = update_ok(loss, gnorm, probe)

  def keep(o, g):
    new = apply_updates(o, g, tx)[0]
    return post(new, o) if post is not None else new

  return jax.lax.cond(ok, keep, lambda o, g: o, old, grads), ok, gnorm


def generator_only_state(built, tx, seed, mesh, rules):
  """State plumbing of a one-trainee trainer (ODE init, flow matching): returns (abstract state, its
  shardings, create()) where create() builds the state inside jit, born sharded, from the loaded weights
  (`built.load`) or a random init from the seed."""
  def make_state(loaded):
    p = loaded if loaded is not None else built.random_init()
    return TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(seed),
                      generator=init_trainee(p, tx))

  abstract_state = jax.eval_shape(make_state, built.abstract if built.weights else None)
  shardings = state_shardings(abstract_state, mesh, generator=built.shardings, tx_generator=tx)

  def create():
    return jax.jit(make_state, out_shardings=shardings)(built.load(mesh, rules))

  return abstract_state, shardings, create


def guarded_generator_step(state, loss_fn, tx, loss_name):
  """One generator update from `loss_fn(params) -> (loss, metrics)`. A non-finite loss, gradient norm or
  updated param keeps the old params and optimiser state (the step still advances; the loop counts and aborts
  on a streak). Returns (state, metrics + {loss_name, grad_norm/generator, finite})."""
  old = state.generator
  (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(old.params)
  new, ok, gnorm = guarded_update(old, loss, grads, tx)
  state = state.replace(generator=new, step=state.step + 1)
  return state, dict(m, **{loss_name: loss, "grad_norm/generator": gnorm, "finite": ok})


def all_finite(*trees):
  leaves = [x for t in trees for x in jax.tree.leaves(t)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class ModelFn:
  """Adapter between pure-dict params and an NNX module: split once, merge inside jitted functions.

  `apply(params, *args, **kw)` rebuilds the module from the static graphdef, the params dict and the non-param
  state captured at construction (buffers such as RoPE tables), then calls it.
  """

  def __init__(self, graphdef, abstract_params: nnx.State, rest: nnx.State):
    self.graphdef = graphdef
    self.rest = rest
    self._treedef = jax.tree.structure(abstract_params)
    # The pure dict flattens in the same (sorted-key) order as the State; check once so a silent mix-up of
    # leaves can never happen.
    pure = nnx.to_pure_dict(abstract_params)
    paths_state = [_key_names(p)[:-1] for p, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]]
    paths_pure = [_key_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(pure)[0]]
    assert paths_state == paths_pure, "param State and pure dict flatten in different orders"

  @classmethod
  def from_module(cls, module):
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return cls(graphdef, params, rest), nnx.to_pure_dict(params)

  def to_state(self, params) -> nnx.State:
    return jax.tree.unflatten(self._treedef, jax.tree.leaves(params))

  def module(self, params):
    return nnx.merge(self.graphdef, self.to_state(params), self.rest)

  def apply(self, params, *args, **kwargs):
    return self.module(params)(*args, **kwargs)


def _key_names(path):
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_count(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def trainee_shardings(abstract: Trainee, param_shardings, tx, replicated) -> Trainee:
  """Shardings of a Trainee: optimiser moments and EMA follow the params; counters are replicated."""
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract.opt_state, param_shardings,
                              transform_non_params=lambda _: replicated)
  return Trainee(params=param_shardings, opt_state=opt,
                 ema=None if abstract.ema is None else param_shardings)


def state_shardings(abstract: TrainState, mesh, *, generator, critic=None, teacher=None, tx_generator,
                    tx_critic=None) -> TrainState:
  """NamedShardings for a whole TrainState from each role's param shardings (pure dicts of NamedSharding)."""
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return TrainState(
      step=repl, rng=repl,
      generator=trainee_shardings(abstract.generator, generator, tx_generator, repl),
      critic=None if abstract.critic is None else trainee_shardings(abstract.critic, critic, tx_critic, repl),
      teacher=None if abstract.teacher is None else teacher)
