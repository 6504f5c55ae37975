"""Training data: prompt files and their cached embeddings, deterministic batch indices, latent shards.

Mirrors the data side of Self-Forcing (`utils/dataset.py`: `TextDataset` one prompt per line; SF+
`text_folder`: one prompt per .txt file; spec `distillation.md` §1.2, §3.2). Prompt embeddings are computed
once with `wanjax.text.encode.TextEncoder` and kept in a `PromptCache`; smoke runs use random fixed contexts
drawn from the seed. Every batch is a pure function of (seed, step), so a resumed run sees the same data.
"""

import glob
import os

import numpy as np
from absl import logging

from wanjax import checkpoint
from wanjax.errors import UsageError

# Wan2.1's default negative prompt (spec wan_model.md §5), used for the teacher's unconditional branch.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走")


def read_prompts(path):
  """Prompts from a .txt file (one per non-empty line) or a folder of .txt files (one prompt each, sorted)."""
  if not path:
    raise UsageError("config.data.prompts is empty; give a .txt file (one prompt per line) or a folder of "
                     ".txt files")
  if os.path.isfile(os.path.join(path, "index.json")):  # a `train.preprocess` folder: captions in clip order
    from train import features
    return features.FeatureSet(path).captions()
  from train.clips import read_text   # UTF-8, a byte-order mark dropped; one clear error otherwise
  if os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, "*.txt")))
    prompts = [read_text(f).strip() for f in files]
  elif os.path.isfile(path):
    prompts = [line.strip() for line in read_text(path).split("\n")]
  else:
    raise UsageError(f"config.data.prompts={path!r} is neither a file nor a folder")
  prompts = [p for p in prompts if p]
  if not prompts:
    raise UsageError(f"config.data.prompts={path!r} contains no prompts")
  return prompts


def random_contexts(seed, n, text_len, text_dim):
  """n random fixed contexts [n, S, D] plus a negative context [S, D] (smoke runs and tests only)."""
  rng = np.random.default_rng([seed, 0x7E57])
  ctx = rng.standard_normal((n + 1, text_len, text_dim)).astype(np.float32)
  return ctx[:n], ctx[n]


def prompt_encoder(text_encoder, tokenizer, *, text_len, policy="bf16"):
  """The `TextEncoder` of `config.data.text_encoder` / `tokenizer`. Load and use it outside `sharding.activate`:
  its weights live on the default device, not on the training mesh."""
  from wanjax.text.encode import load_text_encoder
  check_prompt_encoder(text_encoder, tokenizer)
  return load_text_encoder(text_encoder, tokenizer, policy=policy, max_length=text_len)


def check_prompt_encoder(text_encoder, tokenizer):
  """Both paths given and present (what `prompt_encoder` needs); callers check early, before building models."""
  if not text_encoder or not tokenizer:
    raise UsageError("config.data.text_encoder and config.data.tokenizer are required to encode prompts "
                     "(or set config.data.random_contexts > 0 for a smoke run)")
  for name, p in (("text_encoder", text_encoder), ("tokenizer", tokenizer)):
    if not os.path.exists(p):
      raise UsageError(f"config.data.{name}={p!r} does not exist")


def encode_prompts(prompts, negative, *, text_encoder, tokenizer, cache_dir, text_len, policy="bf16",
                   encoder=None):
  """Encodes prompts and the negative prompt once (cached on disk). Returns ([n, S, D], [S, D]) float32.
  `encoder`: one from `prompt_encoder`, for callers that encode in chunks (loaded once)."""
  from wanjax.text.cache import PromptCache
  enc = encoder or prompt_encoder(text_encoder, tokenizer, text_len=text_len, policy=policy)
  cache = PromptCache(cache_dir)
  rows = []
  for i in range(0, len(prompts), 16):
    rows.append(enc.encode(prompts[i:i + 16], cache=cache)[0].astype(np.float32))
  neg = enc.encode([negative or WAN_NEGATIVE_PROMPT], cache=cache)[0][0].astype(np.float32)
  logging.info("prompt embeddings: %s", dict(enc.stats))
  if not rows:  # negative only (trainers whose prompts come with their data latents)
    return np.zeros((0,) + neg.shape, np.float32), neg
  return np.concatenate(rows), neg


def batch_indices(seed, step, batch, n, *, stream=0):
  """Indices of `batch` items for `step`: epoch-wise shuffles of range(n), a pure function of the arguments."""
  pos = np.arange(step * batch, (step + 1) * batch, dtype=np.int64)
  out = np.empty(batch, np.int64)
  for epoch in np.unique(pos // n):
    perm = np.random.default_rng([seed, stream, int(epoch)]).permutation(n)
    sel = pos // n == epoch
    out[sel] = perm[pos[sel] % n]
  return out


class LatentShards:
  """Latent dataset from `.npy` or `.safetensors` shards; each holds `[N, ...]` samples (key `latents` in
  safetensors). Shards are split round-robin over data-parallel ranks; `batch(step, size)` is deterministic."""

  def __init__(self, path, *, rank=0, num_ranks=1, key="latents"):
    if os.path.isfile(os.path.join(path, "index.json")):  # a `train.preprocess` feature folder (one clip each)
      from train import features
      self._finish(features.FeatureSet(path, rank=rank, num_ranks=num_ranks).clip_arrays(key), path)
      return
    if not os.path.isdir(path):
      raise UsageError(f"config.data.latents={path!r} is not a folder; give a folder of .npy/.safetensors shards "
                       f"or a train.preprocess feature folder")
    files = sorted(glob.glob(os.path.join(path, "*.npy")) + glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
      raise UsageError(f"config.data.latents={path!r}: no .npy or .safetensors shards found")
    files = files[rank::num_ranks]
    if not files:
      raise UsageError(f"{path}: fewer shards than data-parallel ranks ({num_ranks})")
    self.arrays = []
    for f in files:
      if f.endswith(".npy"):
        try:
          self.arrays.append(np.load(f, mmap_mode="r"))
        except (OSError, ValueError) as e:
          raise UsageError(f"{f}: unreadable .npy shard ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                           ) from None
      else:
        reader = checkpoint.SafetensorsReader([f])
        if key not in reader.entries:
          raise UsageError(f"{f}: no tensor {key!r}; found {', '.join(sorted(reader.keys()))}")
        self.arrays.append(reader.view(key))
    self._finish(self.arrays, path)

  def _finish(self, arrays, path):
    self.arrays = arrays
    shapes = sorted({a.shape[1:] for a in self.arrays})
    if len(shapes) != 1:
      raise UsageError(f"{path}: shards hold samples of different shapes {shapes}")
    self.sample_shape = shapes[0]
    self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])

  def __len__(self):
    return int(self.offsets[-1])

  def get(self, indices):
    out = []
    for i in indices:
      s = int(np.searchsorted(self.offsets, i, side="right") - 1)
      out.append(np.asarray(self.arrays[s][i - self.offsets[s]], np.float32))
    return np.stack(out)

  def batch(self, seed, step, size):
    return self.get(batch_indices(seed, step, size, len(self)))


class _Contexts:
  """Prompt embeddings read lazily from shards: `len()`, `.shape` and `[indices]` like a host array."""

  def __init__(self, shards):
    self.shards = shards
    self.shape = (len(shards),) + tuple(shards.sample_shape)

  def __len__(self):
    return len(self.shards)

  def __getitem__(self, indices):
    return self.shards.get(indices)


def data_latents(path, contexts, latent_shape, *, seed, rank=0, num_ranks=1):
  """Clean data latents paired with their prompt embeddings (CausVid DMD, spec distillation.md §3.4).

  path: latent shards holding `latents` `[N, F, H, W, C]` (or ODE trajectories `[N, K, F, H, W, C]`, whose
  last entry is the clean latent, as CausVid reads `ode_latent[:, -1]`) and `context` `[N, S, D]`, or a
  `train.preprocess` feature folder. '' uses random latents paired with `contexts` (smoke runs).
  Returns (contexts: `[indices]` -> `[B, S, D]`, get(indices) -> latents `[B, *latent_shape]` float32).
  """
  latent_shape = tuple(latent_shape)
  if not path:
    if not len(contexts):
      raise UsageError("config.data.latents is empty; give latent shards (or random_contexts > 0 for a smoke run)")
    rng = np.random.default_rng([seed, 0xDA7A])
    fake = rng.standard_normal((len(contexts),) + latent_shape).astype(np.float32)
    return contexts, lambda idx: fake[idx]
  lat = LatentShards(path, rank=rank, num_ranks=num_ranks, key="latents")
  ctx = LatentShards(path, rank=rank, num_ranks=num_ranks, key="context")
  shape = tuple(lat.sample_shape)
  trajectory = len(shape) == len(latent_shape) + 1
  if shape[trajectory:] != latent_shape:
    raise UsageError(f"{path}: latents have sample shape {shape}; the config wants {latent_shape} "
                     f"(data.latent_shape + channels{', after a trajectory axis' if trajectory else ''})")
  if len(ctx) != len(lat):
    raise UsageError(f"{path}: {len(lat)} latents but {len(ctx)} contexts")

  def get(indices):
    x = lat.get(indices)
    return x[:, -1] if trajectory else x

  return _Contexts(ctx), get
