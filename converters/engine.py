"""Runs an expanded name-table plan: checks keys and shapes, then converts tensor by tensor.

`write_model` streams into a JAX-layout model directory (`config.json` + `model.safetensors`); `to_arrays`
returns the converted tensors in memory (tests, small models).

Files already in the folder are replaced crash-safely (`wanjax/model_dir.py`): the new pair is written
complete into a staging folder first, then renamed into place under a journal that the next run finishes.
"""

import json
import os

import numpy as np

from converters import table, transforms
from wanjax import model_dir
from wanjax.checkpoint import StreamingWriter
from wanjax.fileio import atomic_open


def to_arrays(source, steps, *, dtype=None, ignore=(), expected=None):
  """Converts every step into a dict target -> numpy array (after key and shape checks)."""
  table.check_plan(steps, source.keys(), ignore=ignore)
  if expected is not None:
    table.check_shapes(steps, source, expected)
  return {s.target: table.run_step(source, s, dtype) for s in steps}


def write_json_atomic(path, obj):
  with atomic_open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)


def write_model(source, steps, out_dir, *, config: dict, dtype=None, ignore=(), expected=None,
                filename="model.safetensors", progress=None):
  """Streams `steps` from `source` into `out_dir/filename` and writes `out_dir/config.json`.

  `dtype`: numpy dtype for floating tensors (None keeps the source dtype). Peak memory is about one tensor.
  """
  table.check_plan(steps, source.keys(), ignore=ignore)
  if expected is not None:
    table.check_shapes(steps, source, expected)
  entries = []
  for s in steps:
    shape = tuple(source.shape(s.source))
    if s.part is not None:
      shape = (shape[0] // s.part[1],) + shape[1:]
    shape = transforms.SHAPES[s.transform](shape)
    src_dt = _np_dtype(source.dtype(s.source))
    dt = dtype if (dtype is not None and (np.issubdtype(src_dt, np.floating) or src_dt.kind == "V")) else src_dt
    entries.append((s.target, np.dtype(dt), shape))
  with model_dir.staging(out_dir) as stage:
    writer = StreamingWriter(os.path.join(stage, filename), entries, metadata={"format": "wanjax"})
    try:
      for s, (_, dt, _) in zip(steps, entries):
        w = table.run_step(source, s)
        writer.write(s.target, w.astype(dt, copy=False))
        del w
        if progress is not None:
          progress.update(1)
    except BaseException:
      writer.abort()
      raise
    writer.close()
    write_json_atomic(os.path.join(stage, model_dir.CONFIG), config)
    model_dir.commit(out_dir, (filename, model_dir.CONFIG))


def _np_dtype(name) -> np.dtype:
  """Dtype names as reported by sources ('F32', 'BF16', 'float32', 'torch.bfloat16', ...) -> numpy dtype."""
  import ml_dtypes
  from wanjax.checkpoint import ST_DTYPES
  name = str(name).replace("torch.", "")
  if name in ST_DTYPES:
    return np.dtype(ST_DTYPES[name])
  alias = {"bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
           "float8_e5m2": ml_dtypes.float8_e5m2, "half": np.float16, "float": np.float32}
  return np.dtype(alias.get(name, name))
