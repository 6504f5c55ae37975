"""`benchmarks/flops.py` counts 2 FLOPs per multiply-add of convs and dot_generals, scan bodies once per
iteration, the costliest cond branch, and nothing for elementwise work."""

import jax
import jax.numpy as jnp

from benchmarks.flops import program_flops


def test_dot_conv_scan_and_cond_counts():
  a, b = jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6))
  assert program_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b) * 2.0 + 1.0, a, b) == (2 * 3 * 4 * 6 * 5, 0)

  x, k = jnp.ones((2, 9, 11, 7)), jnp.ones((3, 3, 7, 8))   # NHWC, HWIO, SAME: 2*9*11*8 outputs, 3*3*7 each
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert program_flops(conv, x, k)[0] == 2 * (2 * 9 * 11 * 8) * (3 * 3 * 7)
  grouped = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", feature_group_count=7,
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert program_flops(grouped, x, jnp.ones((3, 3, 1, 14)))[0] == 2 * (2 * 7 * 9 * 14) * (3 * 3 * 1)

  m = jnp.ones((8, 8))
  scanned = lambda m: jax.lax.scan(lambda c, _: (c @ m, None), m, None, length=5)[0]
  assert program_flops(scanned, m) == (5 * 2 * 8 * 8 * 8, 0)
  branches = lambda p, m: jax.lax.cond(p, lambda m: m @ m @ m, lambda m: m, m)
  assert program_flops(branches, True, m) == (2 * 2 * 8 * 8 * 8, 0)
  looped = lambda m: jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ m, c[1] + 1), (m, 0))[0]
  assert program_flops(looped, m) == (2 * 8 * 8 * 8, 1)
  assert program_flops(jax.jit(lambda m: m @ m), m) == (2 * 8 * 8 * 8, 0)   # through a nested jit
