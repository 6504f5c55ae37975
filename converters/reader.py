"""Streaming readers for torch checkpoints: one tensor at a time, never the whole model in memory.

Supported: a `.safetensors` file, a folder or `*.safetensors.index.json` of shards, and `.pt/.pth` pickles
(through `torch.load(..., weights_only=True, mmap=True)`, so untrusted pickles cannot run code and tensors
are paged in lazily). Tensors come back as NumPy arrays; bf16 as `ml_dtypes.bfloat16`, fp8 as
`ml_dtypes.float8_e4m3fn`.
"""

import glob
import json
import os

import ml_dtypes
import numpy as np

from wanjax.errors import CheckpointError


class TensorSource:
  """Read-only mapping key -> tensor, read lazily. `prefix` (e.g. 'model.diffusion_model.') is stripped."""

  def keys(self):
    raise NotImplementedError

  def shape(self, key) -> tuple:
    raise NotImplementedError

  def dtype(self, key) -> str:
    raise NotImplementedError

  def get(self, key) -> np.ndarray:
    raise NotImplementedError

  def __contains__(self, key):
    return key in self._keyset()

  def _keyset(self):
    if not hasattr(self, "_ks"):
      self._ks = frozenset(self.keys())
    return self._ks

  def close(self):
    pass


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
              "I8": np.int8, "U8": np.uint8, "I32": np.int32, "I64": np.int64, "F8_E4M3": ml_dtypes.float8_e4m3fn,
              "F8_E5M2": ml_dtypes.float8_e5m2, "BOOL": np.bool_, "I16": np.int16}


# Leading bytes of the files a checkpoint path is most often mistaken for.
_MAGIC = ((b"version https://git-lfs", "a Git LFS pointer, not the weights: fetch the file itself (git lfs pull, or "
                                       "download it again)"),
          (b"\x80", "a torch checkpoint (legacy pickle); give it a .pt name"),
          (b"GGUF", "a GGUF file (llama.cpp / ComfyUI-GGUF quantisation), which is not supported; convert the "
                    "original safetensors instead"),
          (b"\x93NUMPY", "a NumPy .npy array, not a model checkpoint"))


def _sniff(path) -> str:
  """What the first bytes of `path` say it is: 'safetensors', a description, or '' when nothing known."""
  try:
    with open(path, "rb") as f:
      head = f.read(64)
  except OSError as e:
    raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
  if not head:
    return "an empty file"
  if len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{":
    return "safetensors"
  if head.startswith(b"PK\x03\x04"):
    import zipfile
    try:
      with zipfile.ZipFile(path) as z:
        names = z.namelist()
    except (zipfile.BadZipFile, OSError):
      return "a zip archive"
    if any(n.endswith("data.pkl") for n in names):
      return "a torch checkpoint (torch.save zip); give it a .pt name"
    if names and all(n.endswith(".npy") for n in names):
      return "a NumPy .npz archive, not a model checkpoint"
    return "a zip archive"
  known = next((what for magic, what in _MAGIC if head.startswith(magic)), "")
  if known:
    return known
  try:
    text = head.decode("utf-8")
  except UnicodeDecodeError:
    return ""
  return f"a text file starting {text[:40]!r}" if text.isprintable() or "\n" in text else ""


def _read_st_header(path):
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    if n <= 0 or n > 100_000_000:
      what = _sniff(path)
      raise CheckpointError(f"{path}: not a safetensors file" + (f": it is {what}" if what else
                                                                  f" (header length {n})"))
    try:
      header = json.loads(f.read(n))
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
  return header, 8 + n


class SafetensorsSource(TensorSource):
  """One or more safetensors files, read through the header + numpy memmap (any dtype, incl. bf16/fp8)."""

  def __init__(self, paths, prefix=""):
    self.paths = list(paths)
    self.prefix = prefix
    self._index = {}  # key -> (path, dtype str, shape, start, end, data offset)
    self.metadata = {}
    for p in self.paths:
      header, off = _read_st_header(p)
      self.metadata.update(header.pop("__metadata__", None) or {})
      for k, info in header.items():
        if k in self._index:
          raise CheckpointError(f"key {k!r} is in both {self._index[k][0]} and {p}: these files overlap (e.g. a "
                                f"checkpoint and its fp16 variant, or two models in one folder); pass the one file "
                                f"or shard index to convert as --src")
        start, end = info["data_offsets"]
        self._index[k] = (p, info["dtype"], tuple(info["shape"]), start, end, off)
    self._mm = {}

  def keys(self):
    return [k for k in self._index]

  def shape(self, key):
    return self._index[key][2]

  def dtype(self, key):
    return self._index[key][1]

  def get(self, key):
    path, dt, shape, start, end, off = self._index[key]
    if dt not in _ST_DTYPES:
      raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {dt}")
    np_dt = np.dtype(_ST_DTYPES[dt])
    # Plain reads into a fresh buffer, not a memmap: pages of a long-lived memmap stay resident and count
    # towards RSS, so converting a 5.7 GB file would peak at 5.7 GB instead of about one tensor.
    raw = np.empty(end - start, np.uint8)
    with open(path, "rb") as f:
      f.seek(off + start)
      got = f.readinto(raw)
    if got != raw.size or raw.size != np_dt.itemsize * int(np.prod(shape, dtype=np.int64)):
      raise CheckpointError(f"{path}: tensor {key!r} is truncated ({got} bytes for shape {shape} {dt})")
    return raw.view(np_dt).reshape(shape)

  def close(self):
    self._mm.clear()


def _torch_load_error(path, e) -> str:
  """One sentence for a failed weights-only `torch.load`. torch's own text for a refused pickle suggests
  re-running with weights_only=False (arbitrary code execution), so only its specific line is kept."""
  import pickle
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  if isinstance(e, pickle.UnpicklingError):
    detail = next((ln for ln in lines if "GLOBAL" in ln or ln.lower().startswith("unsupported")),
                  lines[-1] if lines else type(e).__name__).rstrip(".")
    return (f"{path}: refused: it pickles objects other than tensors and plain containers ({detail}); only "
            f"weights-only state dicts are read, nothing in it was executed")
  return f"{path}: cannot be read as a torch state dict ({lines[0] if lines else type(e).__name__})"


class TorchSource(TensorSource):
  """A `.pt/.pth` state dict loaded with weights_only=True and mmap (lazy). `subkey` selects a nested dict,
  e.g. 'generator' or 'generator_ema' in Self-Forcing checkpoints."""

  def __init__(self, path, subkey=None):
    try:
      import torch  # converters only: torch is an optional extra
    except ImportError:
      raise CheckpointError(f"{path}: reading .pt/.pth files needs torch; pip install 'wanjax[convert]'") from None
    self.path = path
    try:
      try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
      except RuntimeError:
        # Old (non-zipfile) pickles cannot be mmapped; the retry is inside the outer try so that its
        # refusals (pickled code, a truncated file) become CheckpointErrors too.
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
      raise CheckpointError(_torch_load_error(path, e)) from None
    if subkey is not None:
      if not isinstance(sd, dict) or subkey not in sd:
        nested = sorted(k for k, v in sd.items() if isinstance(v, dict)) if isinstance(sd, dict) else []
        if isinstance(sd, dict) and not nested:
          raise CheckpointError(f"{path}: no entry {subkey!r}: the file is a flat state dict of {len(sd)} entries "
                                f"with no nested one; drop --subkey")
        keys = nested or type(sd).__name__
        raise CheckpointError(f"{path}: no entry {subkey!r}; its nested state dicts are {keys}")
      sd = sd[subkey]
    if not isinstance(sd, dict):
      raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    self._sd = {k: v for k, v in sd.items() if hasattr(v, "shape")}
    self.nested = sorted(k for k, v in sd.items() if isinstance(v, dict))

  def keys(self):
    return list(self._sd)

  def shape(self, key):
    return tuple(self._sd[key].shape)

  def dtype(self, key):
    return str(self._sd[key].dtype).replace("torch.", "")

  def get(self, key):
    import torch
    t = self._sd[key].detach().cpu()
    if t.dtype == torch.bfloat16:
      return t.contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16).copy()
    if t.dtype == torch.float8_e4m3fn:
      return t.contiguous().view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn).copy()
    if t.dtype == torch.float8_e5m2:
      return t.contiguous().view(torch.uint8).numpy().view(ml_dtypes.float8_e5m2).copy()
    return t.numpy().copy()


class PrefixedSource(TensorSource):
  """A view of another source with `prefix` stripped from its keys (keys without the prefix are dropped)."""

  def __init__(self, base, prefix):
    self.base, self.prefix = base, prefix
    self._map = {k[len(prefix):]: k for k in base.keys() if k.startswith(prefix)}

  def keys(self):
    return list(self._map)

  def shape(self, key):
    return self.base.shape(self._map[key])

  def dtype(self, key):
    return self.base.dtype(self._map[key])

  def get(self, key):
    return self.base.get(self._map[key])


_TORCH_EXT = (".pt", ".pth", ".bin", ".ckpt")


def _folder_hint(path) -> str:
  """What a folder without safetensors holds that could be meant: checkpoint files, or model subfolders."""
  names = sorted(os.listdir(path))
  ckpts = [n for n in names if n.endswith(_TORCH_EXT) and os.path.isfile(os.path.join(path, n))]
  subs = [n for n in names if os.path.isdir(os.path.join(path, n))
          and glob.glob(os.path.join(path, n, "*.safetensors*"))]
  if subs:
    return (f"; it holds the model subfolders {', '.join(s + '/' for s in subs)} (a diffusers pipeline?): pass the "
            f"one to convert, e.g. --src {os.path.join(path, subs[0])}")
  if ckpts:
    return f"; it holds {', '.join(ckpts)}: pass the file to convert as --src"
  return ""


def _open_index(path):
  try:
    with open(path) as f:
      weight_map = json.load(f)["weight_map"]
    files = sorted({str(v) for v in weight_map.values()})
  except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not a safetensors shard index (a JSON object with a 'weight_map' of "
                          f"key -> shard file; {type(e).__name__}: {e})") from None
  if not files:
    raise CheckpointError(f"{path}: the shard index's weight_map is empty")
  folder = os.path.dirname(os.path.abspath(path))
  # Shard names are relative to the index (usually bare file names; subfolder paths are honoured).
  paths = [os.path.normpath(os.path.join(folder, v)) for v in files]
  missing = [v for v, p in zip(files, paths) if not os.path.isfile(p)]
  if missing:
    raise CheckpointError(f"{path}: {len(missing)} of the {len(files)} shard files its weight_map lists are "
                          f"missing from {folder}: {', '.join(missing)}; download them beside the index")
  return SafetensorsSource(paths)


def open_source(path, subkey=None) -> TensorSource:
  """Opens a checkpoint file or folder for streaming reads."""
  if not os.path.exists(path):
    raise CheckpointError(f"checkpoint {path!r} does not exist")
  if os.path.isdir(path):
    idx = sorted(glob.glob(os.path.join(path, "*.safetensors.index.json")))
    if len(idx) > 1:
      raise CheckpointError(f"{path}: folder has {len(idx)} shard indexes ({', '.join(map(os.path.basename, idx))}; "
                            f"variants of one model, e.g. fp16): pass the one to convert as --src")
    if idx:
      return _open_index(idx[0])
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
      raise CheckpointError(f"{path}: folder has no *.safetensors files or *.safetensors.index.json"
                            + _folder_hint(path))
    return SafetensorsSource(files)
  if path.endswith(".json"):
    return _open_index(path)
  if path.endswith(".safetensors"):
    return SafetensorsSource([path])
  if path.endswith(_TORCH_EXT):
    what = _sniff(path)   # before importing torch: these need no torch to be told apart
    if what == "safetensors":
      raise CheckpointError(f"{path}: is a safetensors file despite its {os.path.splitext(path)[1]} name; rename "
                            f"it to .safetensors")
    if what and not what.startswith(("a torch checkpoint", "a zip archive")):
      raise CheckpointError(f"{path}: cannot be read as a torch state dict: it is {what}")
    return TorchSource(path, subkey=subkey)
  what = _sniff(path)
  raise CheckpointError(f"{path}: unknown checkpoint file type" + (f" (it is {what})" if what else "")
                        + "; expected .safetensors, a shard index .json or folder of shards, or .pt/.pth/.bin/.ckpt")


class DictSource(TensorSource):
  """An in-memory state dict ({key: numpy array or torch tensor}) — used by tests and the LoRA exporter."""

  def __init__(self, sd):
    self._sd = dict(sd)

  def keys(self):
    return list(self._sd)

  def shape(self, key):
    return tuple(self._sd[key].shape)

  def dtype(self, key):
    return str(self._sd[key].dtype)

  def get(self, key):
    v = self._sd[key]
    if hasattr(v, "detach"):  # a torch tensor (tests): go through the same dtype handling as TorchSource
      import torch
      t = v.detach().cpu()
      if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16).copy()
      if t.dtype == torch.float8_e4m3fn:
        return t.contiguous().view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn).copy()
      return t.numpy().copy()
    return np.asarray(v)
