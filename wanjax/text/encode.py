"""Prompts → the text context the DiT consumes (spec `wan_model.md` §3.5, pitfall §8.7).

Mirrors the reference `wan/modules/t5.py` `T5EncoderModel.__call__` followed by the DiT's re-padding
(`wan/modules/model.py`): clean, tokenise to 512 with `</s>`, run the encoder on the full padded length with the
key mask, trim each row to its real length (including `</s>`) and pad back to 512 with exact zeros.
"""

import collections
import functools
import hashlib
import json
import os

import jax
import numpy as np
from flax import nnx

from wanjax.errors import UsageError
from wanjax.text import load as text_load
from wanjax.text.cache import PromptCache
from wanjax.text.tokenize import Tokenizer, clean_prompt
from wanjax.text.umt5 import UMT5Encoder


def _apply(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state)(ids, mask)


def state_identity(state) -> str:
  """sha256 over every parameter's bytes (fine for small models; `load_text_encoder` uses file stats)."""
  h = hashlib.sha256()
  for path, var in nnx.to_flat_state(state):
    a = np.asarray(jax.device_get(var.get_value()))
    h.update(".".join(map(str, path)).encode() + str(a.dtype).encode() + a.tobytes())
  return h.hexdigest()


class TextEncoder:
  """`encode(prompts) -> (context [B, max_length, D], lengths [B])` as host NumPy arrays.

  `identity` names the encoder for the prompt cache; by default it hashes the parameters and tokenizer.
  """

  def __init__(self, model: UMT5Encoder, tokenizer: Tokenizer, *, identity: str = None):
    self.tokenizer = tokenizer
    self.cfg = model.cfg
    self.graphdef, self.state = nnx.split(model)
    self._forward = jax.jit(functools.partial(_apply, self.graphdef))
    self._identity = identity
    self.policy_name = model.policy.name
    self.stats = collections.Counter()  # "encoded" | "cached": prompts computed vs served from the cache

  @property
  def identity(self) -> str:
    if self._identity is None:
      self._identity = json.dumps({"model": state_identity(self.state), "policy": self.policy_name,
                                   "tokenizer": self.tokenizer.identity}, sort_keys=True)
    return self._identity

  def encode(self, prompts, *, cache: PromptCache = None):
    """prompts: list of str. Returns context `[B, L, D]` (model dtype; zeros after each row's real tokens) and
    lengths `[B]` int32 (real tokens incl. `</s>`), L = tokenizer.max_length."""
    if isinstance(prompts, str):
      prompts = [prompts]
    if not prompts:
      raise UsageError("encode() got no prompts; pass a non-empty list of strings")
    cleaned = [clean_prompt(p) for p in prompts]
    rows = [None] * len(cleaned)
    if cache is not None:
      rows = [cache.get(c, self.identity) for c in cleaned]
      self.stats["cached"] += sum(r is not None for r in rows)
    todo = [i for i, r in enumerate(rows) if r is None]
    if todo:
      ids, mask = self.tokenizer([cleaned[i] for i in todo])
      out = np.asarray(jax.device_get(self._forward(self.state, ids, mask)))  # [b, L, D]
      lengths = mask.sum(axis=1)
      for j, i in enumerate(todo):
        rows[i] = out[j, :lengths[j]]  # trimmed to the real tokens incl. </s>
        if cache is not None:
          cache.put(cleaned[i], self.identity, rows[i])
      self.stats["encoded"] += len(todo)
    text_len = self.tokenizer.max_length
    dtype = rows[0].dtype
    context = np.zeros((len(rows), text_len, self.cfg.dim), dtype)  # exact zeros after the real tokens
    lengths = np.zeros((len(rows),), np.int32)
    for i, r in enumerate(rows):
      context[i, :len(r)] = r
      lengths[i] = len(r)
    return context, lengths


def load_text_encoder(model_dir, tokenizer_path, *, policy="bf16", mesh=None, max_length=512,
                      rules=None) -> TextEncoder:
  """TextEncoder from a converted umT5 directory and a tokenizer folder (weights placed on `mesh` by `rules`, as
  `load_umt5`); the cache identity is taken from the config, the weight files' names/sizes/mtimes, the policy and
  the tokenizer file hash."""
  model = text_load.load_umt5(model_dir, policy=policy, mesh=mesh, rules=rules)
  tokenizer = Tokenizer(tokenizer_path, max_length=max_length)
  files = []
  for f in sorted(os.listdir(model_dir)):
    if f.endswith(".safetensors") or f == "config.json":
      st = os.stat(os.path.join(model_dir, f))
      files.append([f, st.st_size, st.st_mtime_ns])
  identity = json.dumps({"config": model.cfg.to_json_dict(), "files": files, "policy": model.policy.name,
                         "tokenizer": tokenizer.identity}, sort_keys=True)
  return TextEncoder(model, tokenizer, identity=identity)
