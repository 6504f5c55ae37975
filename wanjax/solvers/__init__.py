"""Solvers: one pure step function each, so the sampling loop is a single `lax.fori_loop`.

Every solver provides `init_state(x) -> state` (a fixed-shape pytree) and
`step(state, x, v, i, sigmas, key) -> (x_next, state)` where `v` is the (CFG-combined) velocity at step i,
`i` a traced int32, `sigmas` float32 [N+1] ending in 0, and `key` a per-step PRNG key (used by stochastic
solvers only). `Solver.schedule` names the grid of `wanjax.schedules` the solver is normally used with.
"""

import dataclasses
from typing import Callable

from wanjax.errors import UsageError
from wanjax.solvers import consistency, dpmpp, euler, unipc


@dataclasses.dataclass(frozen=True)
class Solver:
  name: str
  init_state: Callable
  step: Callable
  schedule: str            # default grid: 'unipc' | 'dpm' | 'step_list'
  stochastic: bool = False


SOLVERS = {
    "unipc": Solver("unipc", unipc.init_state, unipc.step, "unipc"),
    "dpmpp": Solver("dpmpp", dpmpp.init_state, dpmpp.step, "dpm"),
    "euler": Solver("euler", euler.init_state, euler.step, "step_list"),
    "consistency": Solver("consistency", consistency.init_state, consistency.step, "step_list",
                          stochastic=True),
}
SOLVERS["dpm++"] = SOLVERS["dpmpp"]  # the reference's `--sample_solver dpm++`


def get_solver(name) -> Solver:
  """Returns the solver called `name`; a Solver passes through."""
  if isinstance(name, Solver):
    return name
  try:
    return SOLVERS[str(name)]
  except KeyError:
    raise UsageError(f"unknown solver {name!r}; valid: {', '.join(sorted(SOLVERS))}") from None
