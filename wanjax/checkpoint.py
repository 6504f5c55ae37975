"""JAX-layout safetensors: streaming atomic writes, header checks, and sharded loading into NNX models.

File layout (written by `converters.convert`, read here): one tensor per key, JAX layout. Parameters stacked
over layers in the model (`blocks.self_attn.q.kernel`, shape `[num_layers, ...]`) are stored per layer as
`blocks.{i}.self_attn.q.kernel`. A model directory holds `config.json` and one or more `*.safetensors`.

Loading never builds a full replica on one device: the model is created abstractly (`nnx.eval_shape`), each
parameter gets its `NamedSharding` from the logical-axis rules, and `jax.make_array_from_callback` reads only
the slice each device owns from a memory map.
"""

import glob
import json
import os

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from wanjax import sharding as shd
from wanjax.errors import CheckpointError, format_key_problems
from wanjax import fileio
from wanjax.fileio import publish

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
             "I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
             "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "BOOL": np.bool_}
_NAME_OF = {np.dtype(v): k for k, v in ST_DTYPES.items()}


def read_header(path):
  """Returns (header dict without __metadata__, metadata dict, data offset) of a safetensors file."""
  try:
    with open(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      if n <= 0 or n > 100_000_000:
        raise CheckpointError(f"{path}: not a safetensors file (header length {n})")
      header = json.loads(f.read(n))
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: cannot read safetensors header ({e})") from None
  meta = header.pop("__metadata__", None) or {}
  size = os.path.getsize(path)
  for k, info in header.items():
    if info.get("dtype") not in ST_DTYPES:
      raise CheckpointError(f"{path}: tensor {k!r} has unsupported dtype {info.get('dtype')}")
    start, end = info["data_offsets"]
    if end > size - 8 - n:
      raise CheckpointError(f"{path}: tensor {k!r} extends past the end of the file (truncated download?)")
  return header, meta, 8 + n


class SafetensorsReader:
  """Zero-copy views of tensors in one or more safetensors files."""

  def __init__(self, paths):
    self.entries, self.metadata, self._mm = {}, {}, {}
    for p in paths:
      header, meta, off = read_header(p)
      self.metadata.update(meta)
      for k, info in header.items():
        if k in self.entries:
          raise CheckpointError(f"{p}: key {k!r} also in {self.entries[k][0]}")
        self.entries[k] = (p, np.dtype(ST_DTYPES[info["dtype"]]), tuple(info["shape"]),
                           off + info["data_offsets"][0], off + info["data_offsets"][1])

  def keys(self):
    return list(self.entries)

  def shape(self, key):
    return self.entries[key][2]

  def view(self, key) -> np.ndarray:
    path, dt, shape, start, end = self.entries[key]
    if path not in self._mm:
      self._mm[path] = np.memmap(path, dtype=np.uint8, mode="r")
    return self._mm[path][start:end].view(dt).reshape(shape)


def model_files(model_dir):
  files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
  if not files:
    raise CheckpointError(f"{model_dir}: no *.safetensors files (convert first: python -m converters.convert)")
  return files


class StreamingWriter:
  """Writes a safetensors file tensor by tensor; the header is fixed up front from (key, dtype, shape).
  The file appears atomically (temp file + rename) when `close()` succeeds."""

  def __init__(self, path, entries, metadata=None):
    self.path = path
    self.order = [k for k, _, _ in entries]
    header, off = {}, 0
    self.spec = {}
    for k, dt, shape in entries:
      dt = np.dtype(dt)
      nbytes = dt.itemsize * int(np.prod(shape, dtype=np.int64))
      header[k] = {"dtype": _NAME_OF[dt], "shape": list(shape), "data_offsets": [off, off + nbytes]}
      self.spec[k] = (dt, tuple(shape))
      off += nbytes
    if metadata:
      header["__metadata__"] = {str(a): str(b) for a, b in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fileio.sweep_once(folder)
    fd, self.tmp = fileio.mkstemp(path)
    self.f = os.fdopen(fd, "wb")
    self.f.write(len(raw).to_bytes(8, "little"))
    self.f.write(raw)
    self.next = 0

  def write(self, key, array):
    if self.next >= len(self.order) or self.order[self.next] != key:
      raise AssertionError(f"write order: expected {self.order[self.next:self.next + 1]}, got {key}")
    dt, shape = self.spec[key]
    array = np.asarray(array)
    if array.dtype != dt or array.shape != shape:
      raise AssertionError(f"{key}: declared {dt}{shape}, got {array.dtype}{array.shape}")
    self.f.write(np.ascontiguousarray(array).tobytes())
    self.next += 1

  def close(self):
    if self.next != len(self.order):
      self.abort()
      raise AssertionError(f"{self.path}: {len(self.order) - self.next} tensors not written")
    self.f.flush()
    os.fsync(self.f.fileno())
    self.f.close()
    publish(self.tmp, self.path)

  def abort(self):
    if not self.f.closed:
      self.f.close()
    if os.path.exists(self.tmp):
      os.unlink(self.tmp)


def save_tensors(path, tensors: dict, metadata=None):
  """Atomically writes a dict of arrays (small models, LoRAs, tests)."""
  tensors = {k: np.asarray(v) for k, v in tensors.items()}
  w = StreamingWriter(path, [(k, v.dtype, v.shape) for k, v in tensors.items()], metadata)
  try:
    for k, v in tensors.items():
      w.write(k, v)
  except BaseException:
    w.abort()
    raise
  w.close()


def flat_params(state) -> dict:
  """nnx.State -> {'a.b.c': Variable} (dotted paths)."""
  return {".".join(str(p) for p in path): v for path, v in nnx.to_flat_state(state)}


def file_keys_for(path: str, num_stacked: int, n: int):
  """File keys of a model param: stacked params `blocks.x` live as `blocks.{i}.x` (i < n)."""
  if num_stacked == 0:
    return [path]
  head, _, rest = path.partition(".")
  return [f"{head}.{i}.{rest}" for i in range(n)]


def stored_dtypes(state, paths) -> dict:
  """{dotted param path: set of the numpy dtypes its file keys are stored in} for the Params of an (abstract)
  model state that the safetensors `paths` hold (a stacked param gathers its per-layer keys)."""
  reader = SafetensorsReader(paths)
  out = {}
  for path, var in flat_params(state).items():
    shape = np.shape(var.get_value())
    ns = len(shd.param_axes(var)) - len(var.get_metadata().get("axes", ()))
    found = {reader.entries[k][1] for k in file_keys_for(path, ns, shape[0] if ns else 0) if k in reader.entries}
    if found:
      out[path] = found
  return out


def expected_file_shapes(state) -> dict:
  """File key -> shape for every Param of an (abstract) model state."""
  out = {}
  for path, var in flat_params(state).items():
    shape = np.shape(var.get_value())
    ns = len(shd.param_axes(var)) - len(var.get_metadata().get("axes", ()))
    for k in file_keys_for(path, ns, shape[0] if ns else 0):
      out[k] = shape[ns:]
  return out


def load_state(abstract_state, paths, *, mesh=None, rules=None, strict=True):
  """Builds a concrete nnx.State matching `abstract_state` from JAX-layout safetensors `paths`.

  Each parameter is created with `make_array_from_callback`, so each device reads only its shard. Missing
  and unexpected keys and shape mismatches are reported together (unexpected keys only when `strict`).
  Floating tensors are cast to the abstract parameter's dtype. `rules`: the logical-axis rule table that places
  them on `mesh` (None: `wanjax.sharding.RULES`).
  """
  reader = SafetensorsReader(paths)
  mesh = mesh or shd.make_mesh("", jax.devices()[:1])
  rules = shd.RULES if rules is None else rules
  flat = flat_params(abstract_state)
  expected = expected_file_shapes(abstract_state)
  problems = []
  for k, shape in expected.items():
    if k not in reader.entries:
      problems.append((k, f"missing from checkpoint (model shape {tuple(shape)})"))
    elif tuple(reader.shape(k)) != tuple(shape):
      problems.append((k, f"checkpoint {reader.shape(k)} vs model {tuple(shape)}"))
  if strict:
    problems += [(k, "unexpected key (not a model parameter)") for k in reader.entries if k not in expected]
  if problems:
    raise CheckpointError(f"{paths[0] if len(paths) == 1 else os.path.dirname(paths[0])}: checkpoint does "
                          f"not match the model:\n" + format_key_problems(problems))

  def build(path, var):
    shape = np.shape(var.get_value())
    dtype = var.get_value().dtype
    axes = shd.param_axes(var)
    ns = len(axes) - len(var.get_metadata().get("axes", ()))
    sharding = jax.sharding.NamedSharding(mesh, shd.spec_for(axes, shape, mesh, rules))
    keys = file_keys_for(path, ns, shape[0] if ns else 0)

    def cb(index):
      if ns == 0:
        return np.asarray(reader.view(keys[0])[index], dtype=dtype)
      layers = range(*index[0].indices(shape[0]))
      return np.stack([np.asarray(reader.view(keys[i])[index[1:]], dtype=dtype) for i in layers])

    return jax.make_array_from_callback(shape, sharding, cb)

  values = {p: build(p, v) for p, v in flat.items()}

  def fill(path, var):
    key = ".".join(str(p) for p in path)
    return var.replace(values[key])

  return nnx.map_state(fill, abstract_state) if hasattr(nnx, "map_state") else _map_state(fill, abstract_state)


def _map_state(fn, state):
  flat = [(path, fn(path, v)) for path, v in nnx.to_flat_state(state)]
  return nnx.from_flat_state(flat)
