"""On-disk cache of prompt embeddings (the trimmed `[len, D]` encoder output of one cleaned prompt).

Keyed by sha256 of (cleaned prompt, encoder identity): the identity covers the encoder config, its weight
files, the precision policy and the tokenizer, so a changed model never serves stale embeddings. Each entry is
one small safetensors file written atomically; an unreadable entry counts as a miss and is rewritten.
"""

import hashlib
import json
import os

import numpy as np
from absl import logging

from wanjax import checkpoint
from wanjax.errors import CheckpointError


class PromptCache:
  """`get(prompt, identity) -> [len, D] array | None`, `put(prompt, identity, array)`."""

  def __init__(self, directory):
    self.directory = os.fspath(directory)
    os.makedirs(self.directory, exist_ok=True)

  @staticmethod
  def key(prompt: str, identity: str) -> str:
    return hashlib.sha256(json.dumps([prompt, identity], ensure_ascii=False).encode()).hexdigest()

  def path(self, prompt, identity) -> str:
    return os.path.join(self.directory, self.key(prompt, identity) + ".safetensors")

  def get(self, prompt, identity):
    path = self.path(prompt, identity)
    if not os.path.exists(path):
      return None
    try:
      reader = checkpoint.SafetensorsReader([path])
      if reader.metadata.get("prompt") != prompt or reader.metadata.get("identity") != identity:
        return None  # a sha256 collision is not expected; this guards against foreign files
      return np.array(reader.view("context"))
    except (CheckpointError, KeyError, ValueError) as e:
      logging.warning("prompt cache entry %s is unreadable (%s); recomputing", path, e)
      return None

  def put(self, prompt, identity, context):
    checkpoint.save_tensors(self.path(prompt, identity), {"context": np.asarray(context)},
                            metadata={"prompt": prompt, "identity": identity})
