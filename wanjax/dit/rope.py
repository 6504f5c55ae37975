"""Precise phase angles and the 3-D rotary position embedding of the Wan DiT.

Mirrors `rope_params` / `rope_apply` of the reference `wan/modules/model.py` (spec `wan_model.md` §1.9): the head
dim K is split into temporal / height / width blocks of `K - 4⌊K/6⌋`, `2⌊K/6⌋`, `2⌊K/6⌋` channels (44/42/42 for
K = 128), each with its own frequencies `ω_j = 10000^(-2j/K_axis)`; channel pairs (2p, 2p+1) are rotated as
complex numbers (interleaved pairs, not halves). Positions are integer patch-grid indices from 0; a frame offset
shifts the temporal positions (block-wise autoregressive generation with a KV cache).

The reference computes its angles `pos·ω` in float64. Float32 `pos·ω` loses ~1e-4 rad at pos ≈ 1000, so
`phase_turns` evaluates `pos·ω/2π mod 1` exactly enough in float32 (error ≲ 2e-7 turns) by splitting ω into
8-bit pieces whose products with an integer position are exact. The same helper serves the timestep sinusoid.
"""

import math

import jax.numpy as jnp
import numpy as np

_PIECE_BITS = 8     # ω/2π is split into 3 pieces of 8 significant bits: int(pos)·piece is exact for |pos| < 2^16
_NUM_PIECES = 3


def _split_pieces(f64: np.ndarray):
  """Splits float64 values into `_NUM_PIECES` float32 arrays of ≤ 8 significant bits each plus a float32 rest."""
  rest = np.asarray(f64, np.float64)
  pieces = []
  for _ in range(_NUM_PIECES):
    m, e = np.frexp(rest)
    p = np.ldexp(np.round(m * 2.0 ** _PIECE_BITS), e - _PIECE_BITS)
    pieces.append(p.astype(np.float32))
    assert np.array_equal(pieces[-1].astype(np.float64), p)
    rest = rest - p    # exact in float64
  return pieces, rest.astype(np.float32)


def _frac(x):
  """x minus the nearest integer (exact in floating point), in [-0.5, 0.5]."""
  return x - jnp.round(x)


def phase_turns(x, freqs):
  """`x·freqs / 2π` modulo 1, in turns in [-0.5, 0.5], float32, accurate to ~2e-7 turns.

  Args:
    x: float or integer array `[...]` (timesteps, positions); exact handling for |x| < 65536.
    freqs: float64 NumPy array `[P]` of angular frequencies (radians per unit of x).
  Returns: `[..., P]` float32.
  """
  f = np.asarray(freqs, np.float64) / (2.0 * math.pi)
  pieces, rest = _split_pieces(f)
  x = jnp.asarray(x).astype(jnp.float32)[..., None]
  xi = jnp.floor(x)
  xf = x - xi                         # exact; in [0, 1)
  acc = xf * f.astype(np.float32)     # |acc| < max f; rounding error far below 1e-7
  acc = _frac(acc + _frac(xi * rest))
  for p in reversed(pieces):          # smallest first; each xi·p is exact, each sum stays in [-1, 1]
    acc = _frac(acc + _frac(xi * p))
  return acc


def cos_sin(x, freqs):
  """(cos, sin) of the angle `x·freqs`, float32 `[..., P]`, as if computed in float64 and rounded."""
  ang = phase_turns(x, freqs) * np.float32(2.0 * math.pi)
  return jnp.cos(ang), jnp.sin(ang)


def axis_dims(head_dim: int):
  """Real channels per axis (t, h, w): `K - 4⌊K/6⌋, 2⌊K/6⌋, 2⌊K/6⌋` (44, 42, 42 for K = 128)."""
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def axis_freqs(dim: int, theta: float = 10000.0) -> np.ndarray:
  """`1 / theta^(2j/dim)`, j < dim/2, float64 (reference `rope_params`)."""
  return 1.0 / np.power(theta, np.arange(0, dim, 2, dtype=np.float64) / dim)


def rope_cos_sin(head_dim: int, grid, frame_offset=0):
  """RoPE tables for a token grid.

  Args:
    head_dim: K.
    grid: (F, H, W) patch-grid sizes (static ints); tokens are ordered (f, h, w) row-major.
    frame_offset: int or traced int scalar added to the temporal positions (frame of the first token).
  Returns: (cos, sin), each float32 `[L, K/2]` with L = F·H·W; pair p of a head uses column p.
  """
  nf, nh, nw = (int(g) for g in grid)
  dt, dh, dw = axis_dims(head_dim)
  cf, sf = cos_sin(jnp.arange(nf, dtype=jnp.float32) + jnp.asarray(frame_offset, jnp.float32), axis_freqs(dt))
  ch, sh = cos_sin(jnp.arange(nh, dtype=jnp.float32), axis_freqs(dh))
  cw, sw = cos_sin(jnp.arange(nw, dtype=jnp.float32), axis_freqs(dw))

  def table(a, b, c):  # [F, P_t], [H, P_h], [W, P_w] -> [F·H·W, K/2]
    shape = (nf, nh, nw)
    a = jnp.broadcast_to(a[:, None, None, :], shape + a.shape[-1:])
    b = jnp.broadcast_to(b[None, :, None, :], shape + b.shape[-1:])
    c = jnp.broadcast_to(c[None, None, :, :], shape + c.shape[-1:])
    return jnp.concatenate([a, b, c], axis=-1).reshape(nf * nh * nw, head_dim // 2)

  return table(cf, ch, cw), table(sf, sh, sw)


def apply_rope(x, cos, sin):
  """Rotates interleaved channel pairs of `x` `[B, L, N, K]` by the angles of `cos`/`sin` (`[L, K/2]`, or
  `[B, L, K/2]`); computed and returned in float32 (the reference rotates in float64, then casts to float32)."""
  b, l, n, k = x.shape
  if cos.ndim == 2:
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  else:
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  xp = x.astype(jnp.float32).reshape(b, l, n, k // 2, 2)
  re, im = xp[..., 0], xp[..., 1]
  out = jnp.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
  return out.reshape(b, l, n, k)
