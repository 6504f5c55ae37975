"""Named tensor transforms from torch layout to JAX layout (spec `wan_model.md` §2.5)."""

import numpy as np


def _linear_t(w):  # Linear.weight [out, in] -> Dense kernel [in, out]
  return np.ascontiguousarray(w.T)


def _conv3d(w):  # Conv3d [out, in, kt, kh, kw] -> [kt, kh, kw, in, out]
  return np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0))


def _conv2d(w):  # Conv2d [out, in, kh, kw] -> [kh, kw, in, out]
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _conv1x1_to_dense(w):  # Conv [out, in, 1, 1(, 1)] -> Dense [in, out]
  return np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]).T)


def _flatten(w):  # VAE gamma [C,1,1,1] / [C,1,1] -> [C]; cls [1,1,D] -> [D]
  return np.ascontiguousarray(w.reshape(-1))


def _squeeze0(w):  # [1, ...] -> [...]
  return np.ascontiguousarray(w.reshape(w.shape[1:]))


TRANSFORMS = {
    "none": lambda w: w,
    "linear_T": _linear_t,
    "conv3d": _conv3d,
    "conv2d": _conv2d,
    "conv1x1_dense": _conv1x1_to_dense,
    "flatten": _flatten,
    "squeeze0": _squeeze0,
}

# Inverse transforms (JAX -> torch layout), used to export LoRA files and by round-trip tests.
INVERSE = {
    "none": lambda w: w,
    "linear_T": _linear_t,
    "conv3d": lambda w: np.ascontiguousarray(w.transpose(4, 3, 0, 1, 2)),
    "conv2d": lambda w: np.ascontiguousarray(w.transpose(3, 2, 0, 1)),
}


SHAPES = {  # shape of the transformed tensor, without touching data
    "none": lambda s: s,
    "linear_T": lambda s: (s[1], s[0]),
    "conv3d": lambda s: (s[2], s[3], s[4], s[1], s[0]),
    "conv2d": lambda s: (s[2], s[3], s[1], s[0]),
    "conv1x1_dense": lambda s: (s[1], s[0]),
    "flatten": lambda s: (int(np.prod(s)),),
    "squeeze0": lambda s: tuple(s[1:]),
}


def apply(name, w):
  try:
    fn = TRANSFORMS[name]
  except KeyError:
    raise KeyError(f"unknown transform {name!r}; known: {sorted(TRANSFORMS)}") from None
  return fn(w)
