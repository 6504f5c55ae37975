"""Multiply-add work of a jax program, counted from its jaxpr: 2 FLOPs per multiply-add of every convolution and
dot_general, scan bodies counted once per iteration. The benchmarks divide it by measured seconds for TFLOP/s.

Counting the jaxpr rather than asking XLA (`compiled.cost_analysis()`) keeps the number the same on every backend
and independent of fusion decisions; elementwise work is left out on purpose (it is memory traffic, not math).
A `while` loop's trip count is unknown: its body is counted once and `loops_counted_once` says how many there were.
"""

import math


def conv_flops(eqn):
  """2 · output elements · (kernel window × input channels per group) of one `conv_general_dilated`."""
  out = eqn.outvars[0].aval
  rhs = eqn.invars[1].aval
  dn = eqn.params["dimension_numbers"]
  spec = dn.rhs_spec   # (out feature dim, in feature dim, spatial dims...)
  window = math.prod(rhs.shape[d] for d in spec[2:])
  return 2 * math.prod(out.shape) * window * rhs.shape[spec[1]]


def dot_flops(eqn):
  """2 · output elements · contracted size of one `dot_general`."""
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval
  return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


def jaxpr_flops(jaxpr):
  """(FLOPs, loops counted once) of a (closed) jaxpr."""
  from jax.extend import core as jax_core
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total, loops = 0, 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += conv_flops(eqn)
    elif name == "dot_general":
      total += dot_flops(eqn)
    elif name == "scan":
      body, inner = jaxpr_flops(eqn.params["jaxpr"])
      total, loops = total + eqn.params["length"] * body, loops + inner
    elif name == "cond":   # the costliest branch
      counted = [jaxpr_flops(b) for b in eqn.params["branches"]]
      best = max(counted)
      total, loops = total + best[0], loops + best[1]
    else:
      subs = list(jax_core.jaxprs_in_params(eqn.params))
      if name == "while":
        loops += 1
      for sub in subs:
        f, inner = jaxpr_flops(sub)
        total, loops = total + f, loops + inner
  return total, loops


def program_flops(fn, *args):
  """(FLOPs, loops counted once) of `fn(*args)`; args may be `jax.ShapeDtypeStruct`s (nothing is computed)."""
  import jax
  return jaxpr_flops(jax.make_jaxpr(fn)(*args))
