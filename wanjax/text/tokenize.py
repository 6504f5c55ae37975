"""Prompt cleaning and tokenisation, as the reference `wan/modules/tokenizers.py` (`HuggingfaceTokenizer`,
`clean='whitespace'`; spec `wan_model.md` §3.4).

The tokenizer is read from a user-supplied folder (never downloaded): `tokenizer.json` (HF fast-tokenizer
format, through the `tokenizers` package) or, when the `sentencepiece` package is installed, `spiece.model`.
Every prompt is cleaned, tokenised with `</s>` appended, truncated and padded to `max_length` (512), exactly as
`tokenizer(texts, padding='max_length', truncation=True, max_length=512, add_special_tokens=True)`.
"""

import html
import os
import re

import numpy as np
from absl import logging

from wanjax.errors import UsageError
from wanjax.fileio import file_sha256

try:
  import ftfy
except ImportError:  # optional at import time; a runtime dependency in pyproject
  ftfy = None

EOS, PAD = "</s>", "<pad>"


def clean_prompt(text: str) -> str:
  """ftfy.fix_text → html.unescape twice → strip → collapse whitespace runs to one space → strip."""
  if ftfy is not None:
    text = ftfy.fix_text(text)
  else:
    logging.log_first_n(logging.WARNING, "ftfy is not installed; prompts are cleaned without fix_text "
                        "(pip install ftfy to match the reference)", 1)
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
  """`tokenizer(texts) -> (ids [B, max_length] int32, mask [B, max_length] int32)`; texts are not cleaned here."""

  def __init__(self, path, *, max_length=512):
    if max_length < 1:
      raise UsageError(f"max_length={max_length} must be >= 1")
    self.max_length = max_length
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    json_path = path if path.endswith(".json") else os.path.join(folder, "tokenizer.json")
    sp_path = path if path.endswith(".model") else os.path.join(folder, "spiece.model")
    if os.path.isfile(json_path):
      self._init_json(json_path)
    elif os.path.isfile(sp_path):
      self._init_sentencepiece(sp_path)
    else:
      raise UsageError(f"no tokenizer at {path!r}: expected a folder with tokenizer.json (or spiece.model with "
                       f"the sentencepiece package), e.g. the `tokenizer/` folder of a diffusers Wan checkpoint")
    self.identity = f"{os.path.basename(self.path)}:{file_sha256(self.path)}:{max_length}"

  def _init_json(self, path):
    import tokenizers
    from tokenizers.processors import TemplateProcessing
    self.path, self.kind = path, "tokenizers"
    tok = tokenizers.Tokenizer.from_file(path)
    self.eos_id, self.pad_id = tok.token_to_id(EOS), tok.token_to_id(PAD)
    if self.eos_id is None or self.pad_id is None:
      raise UsageError(f"{path}: the vocabulary needs the tokens {EOS!r} and {PAD!r} (umT5 conventions)")
    if tok.post_processor is None:
      # HF umT5 files carry a template that appends </s>; plain vocabularies (toy worlds) get the same one.
      tok.post_processor = TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, self.eos_id)])
    # Truncation keeps room for the appended </s>, like HF `truncation=True`.
    tok.enable_truncation(max_length=self.max_length)
    tok.enable_padding(length=self.max_length, pad_id=self.pad_id, pad_token=PAD)
    self._tok = tok

  def _init_sentencepiece(self, path):
    try:
      import sentencepiece
    except ImportError:
      raise UsageError(f"{path}: reading spiece.model needs the sentencepiece package (pip install "
                       f"sentencepiece), or supply tokenizer.json") from None
    self.path, self.kind = path, "sentencepiece"
    self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
    self.eos_id = self._sp.eos_id()
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0
    if self.eos_id < 0:
      raise UsageError(f"{path}: the sentencepiece model has no end-of-sequence id")

  def __call__(self, texts):
    if isinstance(texts, str):
      texts = [texts]
    n, lm = len(texts), self.max_length
    if self.kind == "tokenizers":
      encs = self._tok.encode_batch(list(texts), add_special_tokens=True)
      ids = np.asarray([e.ids for e in encs], np.int32).reshape(n, lm)
      mask = np.asarray([e.attention_mask for e in encs], np.int32).reshape(n, lm)
      return ids, mask
    ids = np.full((n, lm), self.pad_id, np.int32)
    mask = np.zeros((n, lm), np.int32)
    for i, t in enumerate(texts):
      row = list(self._sp.encode(t))[:lm - 1] + [self.eos_id]
      ids[i, :len(row)] = row
      mask[i, :len(row)] = 1
    return ids, mask
