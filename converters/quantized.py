"""Views over quantised torch checkpoints: LightX2V per-channel `weight_scale` and ComfyUI per-tensor
`scale_weight` files, presented as float32 weights (or kept quantised with a per-channel scale).

Mirrors LightX2V `tools/convert/quant/quant.py` (distillation.md §5.4; wan_model.md §2.4): `<name>.weight` is
int8 or float8_e4m3fn `[out, in]`, `<name>.weight_scale` is float32 `[out, 1]`, and `W = w_q.float() * scale`.
ComfyUI-mode files store one scalar `<module>.scale_weight` per weight instead.
"""

import numpy as np

from converters.reader import TensorSource
from wanjax.errors import CheckpointError

CHANNEL_SUFFIX = ".weight_scale"    # LightX2V: `<name>.weight` + `<name>.weight_scale [out, 1]`
TENSOR_SUFFIX = ".scale_weight"     # ComfyUI: `<module>.weight` + `<module>.scale_weight` (scalar)


def has_quantized_keys(keys) -> bool:
  return any(k.endswith(CHANNEL_SUFFIX) or k.endswith(TENSOR_SUFFIX) for k in keys)


def _norm_dtype(name) -> str:
  name = str(name).replace("torch.", "").lower()
  return {"i8": "int8", "f8_e4m3": "float8_e4m3fn", "float8_e4m3": "float8_e4m3fn"}.get(name, name)


def _scale_map(keys):
  """weight key -> (scale key, 'channel' | 'tensor') for every scale whose weight exists."""
  keys = set(keys)
  out = {}
  for k in keys:
    for suffix, kind in ((CHANNEL_SUFFIX, "channel"), (TENSOR_SUFFIX, "tensor")):
      if k.endswith(suffix):
        w = k[:-len(suffix)] + ".weight"
        if w in keys:
          out[w] = (k, kind)
  return out


def quantized_format(keys, dtype_of) -> str:
  """'int8' or 'float8_e4m3fn': the storage dtype of the quantised weights (all must agree)."""
  fmts = {_norm_dtype(dtype_of(w)) for w in _scale_map(keys)}
  if len(fmts) != 1 or not fmts <= {"int8", "float8_e4m3fn"}:
    raise CheckpointError(f"quantised weights have dtypes {sorted(fmts)}; supported: one of int8, float8_e4m3fn")
  return fmts.pop()


class QuantizedView(TensorSource):
  """Dequantising view: each quantised `<name>.weight` reads as float32 `w.astype(f32) * scale` and the scale
  keys disappear. With `keep=True` weights stay int8/fp8 and every quantised weight gets a float32
  per-channel `<name>.weight_scale [out, 1]` (ComfyUI per-tensor scales are broadcast to it). `keep` may also
  be a predicate on the weight key: only those weights stay quantised, the others are dequantised (ComfyUI
  scaled-fp8 files also quantise the embeddings and the head, which the model keeps in float)."""

  def __init__(self, base, *, keep=False):
    self.base = base
    self._scales = _scale_map(base.keys())
    if not self._scales:
      raise CheckpointError("no quantised weights found (no '.weight_scale' / '.scale_weight' key with its weight)")
    self.format = quantized_format(base.keys(), base.dtype)
    self._kept = {w for w in self._scales if (keep(w) if callable(keep) else keep)}
    self.keep = bool(self._kept)
    hidden = {s for s, _ in self._scales.values()}
    self._keys = [k for k in base.keys() if k not in hidden]
    self._virtual = {w[:-len(".weight")] + CHANNEL_SUFFIX: w for w in sorted(self._kept)}
    self._keys += [k for k in self._virtual if k not in set(self._keys)]
    for w, (s, kind) in self._scales.items():
      out, shape = base.shape(w)[0], tuple(base.shape(s))
      ok = shape in ((out, 1), (out,)) if kind == "channel" else int(np.prod(shape, dtype=np.int64)) == 1
      if len(base.shape(w)) != 2 or not ok:
        want = f"({out}, 1)" if kind == "channel" else "one element"
        raise CheckpointError(f"{s}: shape {shape} does not fit weight {w} {tuple(base.shape(w))}; expected {want}")

  def keys(self):
    return list(self._keys)

  def shape(self, key):
    if key in self._virtual:
      return (self.base.shape(self._virtual[key])[0], 1)
    return tuple(self.base.shape(key))

  def dtype(self, key):
    if key in self._virtual or (key in self._scales and key not in self._kept):
      return "float32"
    return self.base.dtype(key)

  def _scale(self, weight_key):
    s, kind = self._scales[weight_key]
    v = np.asarray(self.base.get(s), np.float32)
    out = self.base.shape(weight_key)[0]
    return v.reshape(out, 1) if kind == "channel" else np.full((out, 1), v.reshape(()), np.float32)

  def get(self, key):
    if key in self._virtual:
      return self._scale(self._virtual[key])
    w = self.base.get(key)
    if key in self._scales and key not in self._kept:
      return w.astype(np.float32) * self._scale(key)
    return w

  def scaled_weights(self):
    """Keys of every weight stored quantised in the checkpoint (with a scale), kept or not."""
    return sorted(self._scales)

  def quantized_weights(self):
    """Keys of the weights this view keeps quantised (none without `keep`)."""
    return sorted(self._kept)
