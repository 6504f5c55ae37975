"""Cached training features on disk: safetensors shards + one `index.json`, written and read lazily.

What is cached mirrors distill_wan2.1's preprocessing (spec `post_training.md` A.1), channels-last as everywhere
in wanjax (the reference stores torch `[C, F, H, W]` `.pt` files, one per tensor per clip):

  latent    [F, h, w, 16]   normalised VAE latent mean of the resized clip (F = (frames − 1)/4 + 1)
  context   [L, D]          umT5 output trimmed to the L real tokens (incl. `</s>`); padded with zeros on read
  clip_fea  [257, 1280]     I2V: CLIP penultimate-block tokens of the first frame
  y         [F, h, w, 20]   I2V: 4-channel first-frame mask | VAE latent of [first frame, zeros…]

A folder holds `shard-NNNNN.safetensors` (tensors keyed `<clip id>.<name>`, ~64 clips each, written
atomically), `uncond.safetensors` (`empty`: umT5 of "" as the reference's `null.pt`, `negative`: the negative
prompt), `index.json` (settings + one record per clip, rewritten atomically after every shard) and
`skipped.json` (clips that were not cached, with the reason). `FeatureSet` reads it through memory maps;
nothing is loaded until a clip is asked for.

A video clip's record holds the `fingerprint` of its source file ({size, mtime_ns, sha256}, `train/clips.py`),
so a re-run notices a file edited in place or moved (`train/preprocess.py`); records of older folders have none
and still load. A writer holds `.lock` (flock) while it runs: a second writer of the same folder is refused,
and temp files of an interrupted one (`.tmp-*.safetensors`, `.index.json.*.tmp.json`) are removed on opening.
"""

import collections
import json
import os

import numpy as np
from absl import logging

from wanjax import checkpoint
from wanjax import fileio
from wanjax.fileio import atomic_open
from wanjax.errors import UsageError

FORMAT = "wanjax-features"
VERSION = 1
INDEX, SKIPPED, UNCOND, LOCK = "index.json", "skipped.json", "uncond.safetensors", ".lock"
NAMES = ("latent", "context", "clip_fea", "y")
# The names `train/data.py: LatentShards(key=...)` may ask for, and the tensor each one reads.
KEY_ALIASES = {"latents": "latent", "latent": "latent", "context": "context", "clip_fea": "clip_fea", "y": "y"}


def write_json(path, obj):
  """Writes JSON atomically (temp file in the same folder + os.replace)."""
  with atomic_open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)


def read_index(folder):
  path = os.path.join(folder, INDEX)
  try:
    with open(path, encoding="utf-8") as f:
      index = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UsageError(f"{path}: cannot read the feature index ({e}); run python -m train.preprocess first") from None
  if index.get("format") != FORMAT or index.get("version") != VERSION:
    raise UsageError(f"{path}: not a {FORMAT} v{VERSION} index (format={index.get('format')!r}, "
                     f"version={index.get('version')!r})")
  return index


def settings_diff(old: dict, new: dict) -> list:
  """Sorted `key: old vs new` lines for every setting that differs."""
  keys = sorted(set(old) | set(new))
  return [f"{k}: {old.get(k)!r} vs {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _ours(name):
  return (name in (INDEX, SKIPPED, UNCOND, "toy_tokenizer") or name.startswith(".")
          or (name.startswith("shard-") and name.endswith(".safetensors")))


def check_output_folder(folder):
  """Creates the feature folder `folder`, or checks that an existing one is a feature folder (or empty): a
  mistyped --output (the clips folder, a file) is refused before anything is written into it."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise UsageError(f"--output {folder} is a file; give a folder (a new one, or one train.preprocess wrote to "
                     f"resume it)")
  if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, INDEX)):
    other = sorted(n for n in os.listdir(folder) if not _ours(n))
    if other:
      raise UsageError(f"--output {folder} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}"
                       f") and no {INDEX}: not a feature folder; give a new or empty folder")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise UsageError(f"--output {folder}: cannot create the folder ({e.strerror})") from None


class FeatureWriter:
  """Appends clips to a feature folder: buffers `clips_per_shard` clips, then writes one shard and the index.

  Opening an existing folder resumes it: `done` holds the finished clip ids. Settings that differ from the
  folder's raise (a folder never mixes clips cached with different frame counts, sizes or encoders). The
  writer locks the folder until `close()` (or the process ends): one writer per folder at a time.
  """

  def __init__(self, folder, settings: dict, *, clips_per_shard=64):
    if clips_per_shard < 1:
      raise UsageError(f"clips_per_shard={clips_per_shard} must be >= 1")
    self.folder, self.clips_per_shard = folder, int(clips_per_shard)
    check_output_folder(folder)
    lock = os.path.join(folder, LOCK)
    try:
      self._lock = fileio.try_lock(lock)
    except PermissionError:
      raise UsageError(f"--output {folder} is not writable (cannot create {LOCK} in it)") from None
    except OSError as e:   # a filesystem without flock (some network mounts): run unlocked
      logging.warning("%s: cannot lock %s (%s); do not run two train.preprocess into this folder at once", folder,
                      LOCK, e.strerror)
      self._lock = -1
    if self._lock is None:
      raise UsageError(f"{folder} is being written by another train.preprocess run (it holds {lock}); wait for "
                       f"it to finish or use another --output folder")
    try:
      self._open(settings)
    except BaseException:
      self.close()
      raise

  def _open(self, settings):
    folder = self.folder
    # With the lock held no other writer of ours is live here: every temp file is an interrupted write's.
    fileio.sweep_temps(folder, everything=self._lock >= 0)
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from the file
    if os.path.exists(os.path.join(folder, INDEX)):
      self.index = read_index(folder)
      diff = settings_diff(self.index["settings"], settings)
      if diff:
        raise UsageError(f"{folder} was written with different settings ({'; '.join(diff)}); use a new "
                         f"--output folder or the config it was written with")
    else:
      self.index = {"format": FORMAT, "version": VERSION, "settings": settings, "shards": [], "clips": [],
                    "uncond": None}
    lost = sorted({c["shard"] for c in self.index["clips"] if not os.path.exists(os.path.join(folder, c["shard"]))})
    if lost:   # deleted or lost: their clips are encoded again (the names of new shards never reuse theirs)
      n = sum(c["shard"] in lost for c in self.index["clips"])
      logging.warning("%s: %d shard(s) named by %s are missing (%s); their %d clip(s) will be encoded again",
                      folder, len(lost), INDEX, ", ".join(lost), n)
      self.index["clips"] = [c for c in self.index["clips"] if c["shard"] not in lost]
    self.dirty = bool(lost)   # records changed in place (dropped, moved): the index is rewritten at `flush`
    self.done = {c["id"] for c in self.index["clips"]}
    self.skipped = {}
    skipped_path = os.path.join(folder, SKIPPED)
    if os.path.exists(skipped_path):
      with open(skipped_path, encoding="utf-8") as f:
        self.skipped = {s["id"]: s for s in json.load(f)}
    self.buffer = []          # [(record, {name: array})]
    self.shards_written = 0   # in this session

  def close(self):
    """Releases the folder's lock (buffered clips not flushed are dropped, as a crash would)."""
    if self._lock is not None and self._lock >= 0:
      os.close(self._lock)
    self._lock = None

  # -- writing
  def drop(self, ids):
    """Removes the records of `ids` from the index (clips whose source changed, to be cached again); their
    tensors stay in their shard as dead bytes, which no record names."""
    ids = set(ids)
    if ids:
      self.index["clips"] = [c for c in self.index["clips"] if c["id"] not in ids]
      self.done -= ids
      self.dirty = True

  def update(self, record, **fields):
    """Changes fields of a cached clip's record (one of `index["clips"]`: a moved source, a refreshed
    fingerprint)."""
    record.update(fields)
    self.dirty = True

  def add(self, record: dict, tensors: dict):
    """Queues one clip: `record` (id, source, caption, …) and its arrays by name (see NAMES)."""
    if record["id"] in self.done:
      raise AssertionError(f"clip {record['id']} is already cached")
    bad = sorted(set(tensors) - set(NAMES))
    if bad:
      raise AssertionError(f"unknown feature names {bad}; valid: {NAMES}")
    self.buffer.append((record, {k: np.asarray(v) for k, v in tensors.items()}))
    self.done.add(record["id"])
    self.skipped.pop(record["id"], None)
    if len(self.buffer) >= self.clips_per_shard:
      self.flush()

  def skip(self, clip_id, source, reason):
    self.skipped[clip_id] = {"id": clip_id, "source": source, "reason": reason}

  def flush(self):
    """Writes the buffered clips as the next shard, then the index (shard first: the index never names a
    missing file; a shard the index does not name yet is simply overwritten on resume)."""
    if self.buffer:
      name = f"shard-{len(self.index['shards']):05d}.safetensors"
      tensors, records = {}, []
      for record, arrays in self.buffer:
        rec = dict(record, shard=name, keys={})
        for k, a in arrays.items():
          tensors[f"{record['id']}.{k}"] = a
          rec["keys"][k] = {"shape": list(a.shape), "dtype": str(a.dtype)}
        records.append(rec)
      checkpoint.save_tensors(os.path.join(self.folder, name), tensors, metadata={"format": FORMAT})
      self.index["shards"].append(name)
      self.index["clips"].extend(records)
      self.buffer = []
      self.shards_written += 1
      self.dirty = True
    if self.dirty:
      write_json(os.path.join(self.folder, INDEX), self.index)
      self.dirty = False
    self.write_skipped()

  def write_skipped(self):
    write_json(os.path.join(self.folder, SKIPPED), sorted(self.skipped.values(), key=lambda s: s["source"]))

  def has_uncond(self) -> bool:
    return bool(self.index.get("uncond")) and os.path.exists(os.path.join(self.folder, UNCOND))

  def write_uncond(self, empty, negative, negative_prompt):
    """`empty` [L0, D] (umT5 of ""), `negative` [L1, D] (the negative prompt), both trimmed."""
    checkpoint.save_tensors(os.path.join(self.folder, UNCOND), {"empty": empty, "negative": negative},
                            metadata={"format": FORMAT})
    self.index["uncond"] = {"file": UNCOND, "negative_prompt": negative_prompt,
                            "lengths": {"empty": int(len(empty)), "negative": int(len(negative))}}
    write_json(os.path.join(self.folder, INDEX), self.index)
    self.dirty = False


class _ClipArray:
  """One clip's tensor as a `[1, ...]` array-like (what `LatentShards` indexes): read on `[0]`."""

  def __init__(self, features, i, name):
    self.features, self.i, self.name = features, i, name
    self.shape = (1,) + features.sample_shape(i, name)

  def __len__(self):
    return 1

  def __getitem__(self, j):
    if j != 0:
      raise IndexError(j)
    return self.features.tensor(self.i, self.name)


class FeatureSet:
  """Lazy reader of a feature folder. `rank/num_ranks` keep every `num_ranks`-th clip (data-parallel hosts).

  `tensor(i, name)` returns clip i's array (contexts zero-padded to `text_len`); `batch(indices)` stacks
  clips of one shape; `buckets()` groups clip indices by latent shape for bucketed batching.
  """

  def __init__(self, folder, *, rank=0, num_ranks=1, text_len=None):
    self.folder = folder
    self.index = read_index(folder)
    self.settings = self.index["settings"]
    self.clips = self.index["clips"][rank::num_ranks]
    if not self.clips:
      raise UsageError(f"{folder}: no cached clips for rank {rank} of {num_ranks} "
                       f"({len(self.index['clips'])} clips in all)")
    lost = sorted({c["shard"] for c in self.clips if not os.path.exists(os.path.join(folder, c["shard"]))})
    if lost:
      raise UsageError(f"{folder}: {len(lost)} shard(s) named by {INDEX} are missing ({', '.join(lost[:3])}"
                       f"{', ...' if len(lost) > 3 else ''}); run train.preprocess again with the same --input and "
                       f"--output to encode their clips again")
    self.text_len = int(text_len or self.settings["text_len"])
    longest = max(c["keys"]["context"]["shape"][0] for c in self.clips if "context" in c["keys"])
    if longest > self.text_len:
      raise UsageError(f"text_len={self.text_len} is shorter than the longest cached prompt ({longest} tokens); "
                       f"use text_len >= {longest}")
    self._readers = {}

  def __len__(self):
    return len(self.clips)

  def _reader(self, shard):
    if shard not in self._readers:
      self._readers[shard] = checkpoint.SafetensorsReader([os.path.join(self.folder, shard)])
    return self._readers[shard]

  def names(self):
    """Feature names every clip has."""
    return [n for n in NAMES if all(n in c["keys"] for c in self.clips)]

  def sample_shape(self, i, name):
    c = self.clips[i]
    if name not in c["keys"]:
      raise UsageError(f"{self.folder}: clip {c['id']} has no {name!r}; it has {', '.join(c['keys'])}")
    shape = tuple(c["keys"][name]["shape"])
    return (self.text_len,) + shape[1:] if name == "context" else shape

  def view(self, i, name):
    """Zero-copy memory-mapped view of clip i's stored tensor (contexts unpadded)."""
    c = self.clips[i]
    self.sample_shape(i, name)
    return self._reader(c["shard"]).view(f"{c['id']}.{name}")

  def tensor(self, i, name):
    """Clip i's tensor as float32; contexts are zero-padded to `text_len` (the reference pads to 512)."""
    v = np.asarray(self.view(i, name), np.float32)
    if name != "context":
      return v
    out = np.zeros(self.sample_shape(i, name), np.float32)
    out[:len(v)] = v
    return out

  def length(self, i):
    """Real token count of clip i's prompt."""
    return int(self.clips[i]["keys"]["context"]["shape"][0])

  def batch(self, indices, names=None):
    """{name: [B, ...] float32} plus `context_lengths` [B] int32; all clips must share their shapes."""
    names = names or self.names()
    out = {}
    for n in names:
      shapes = sorted({self.sample_shape(int(i), n) for i in indices})
      if len(shapes) != 1:
        raise UsageError(f"{self.folder}: clips {list(map(int, indices))} have {n} shapes {shapes}; batch "
                         f"within one bucket (FeatureSet.buckets())")
      out[n] = np.stack([self.tensor(int(i), n) for i in indices])
    if "context" in names:
      out["context_lengths"] = np.asarray([self.length(int(i)) for i in indices], np.int32)
    return out

  def buckets(self):
    """{latent shape: [clip indices]}; prompt-only folders have one bucket keyed ()."""
    groups = collections.defaultdict(list)
    for i, c in enumerate(self.clips):
      groups[tuple(c["keys"]["latent"]["shape"]) if "latent" in c["keys"] else ()].append(i)
    return dict(groups)

  def clip_arrays(self, key):
    """Per-clip `[1, ...]` array-likes of `key` (a LatentShards key: latents, context, clip_fea, y)."""
    if key not in KEY_ALIASES:
      raise UsageError(f"{self.folder}: unknown feature {key!r}; valid: {', '.join(KEY_ALIASES)}")
    return [_ClipArray(self, i, KEY_ALIASES[key]) for i in range(len(self))]

  def captions(self):
    return [c["caption"] for c in self.clips]

  def uncond(self, which="empty"):
    """`[text_len, D]` float32 unconditional context: 'empty' (umT5 of "", the reference's null.pt) or
    'negative' (the negative prompt given at preprocessing)."""
    u = self.index.get("uncond")
    if not u:
      raise UsageError(f"{self.folder}: no unconditional embedding was cached")
    if which not in ("empty", "negative"):
      raise UsageError(f"uncond which={which!r}; valid: empty, negative")
    v = np.asarray(self._reader(u["file"]).view(which), np.float32)
    out = np.zeros((self.text_len,) + v.shape[1:], np.float32)
    out[:len(v)] = v
    return out
