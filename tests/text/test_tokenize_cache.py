"""Prompt cleaning, tokenisation (vs transformers' fast tokenizer), TextEncoder trimming/zero re-padding
(spec §3.5) and the on-disk prompt cache."""

import os

import numpy as np
import pytest
from flax import nnx

from wanjax.errors import UsageError
from wanjax.text import tokenize, umt5
from wanjax.text.cache import PromptCache
from wanjax.text.encode import TextEncoder
from wanjax.text.tokenize import Tokenizer, clean_prompt

WORDS = "a red fox jumps over the lazy dog in snow at night under bright moon".split()
MAX_LEN = 24


def _write_tokenizer(folder, *, template):
  from tokenizers import Tokenizer as HFTok, models, pre_tokenizers, processors
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = HFTok(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  if template:  # what HF umT5 tokenizer.json files carry; without it our loader installs the same template
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  os.makedirs(folder, exist_ok=True)
  tok.save(os.path.join(folder, "tokenizer.json"))
  return str(folder)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  return _write_tokenizer(tmp_path_factory.mktemp("tok"), template=False)


@pytest.fixture(scope="module")
def model():
  return umt5.UMT5Encoder(umt5.PRESETS["tiny"], policy="float32", rngs=nnx.Rngs(3))


def test_clean_prompt():
  assert clean_prompt("  A &amp;amp; B\n\t\u3000c  ") == "A & B c"
  assert clean_prompt("x&lt;y&gt;") == "x<y>"
  if tokenize.ftfy is None:
    pytest.skip("ftfy not installed: mojibake repair not checked")
  assert clean_prompt("âœ” done") == "✔ done"


@pytest.mark.parametrize("template", [False, True])
def test_tokenizer_matches_transformers(tmp_path, template):
  transformers = pytest.importorskip("transformers")
  folder = _write_tokenizer(tmp_path, template=template)
  texts = ["a red fox", "the lazy dog", " ".join(WORDS * 3), "unknown words here"]
  ids, mask = Tokenizer(folder, max_length=MAX_LEN)(texts)
  assert ids.dtype == np.int32 and ids.shape == (4, MAX_LEN) and mask.shape == (4, MAX_LEN)
  # Independent reference: the HF fast tokenizer on a file that carries the umT5 template.
  ref_file = _write_tokenizer(tmp_path / "ref", template=True) + "/tokenizer.json"
  hf = transformers.PreTrainedTokenizerFast(tokenizer_file=ref_file, pad_token="<pad>", eos_token="</s>",
                                            unk_token="<unk>")
  ref = hf(texts, padding="max_length", truncation=True, max_length=MAX_LEN, add_special_tokens=True)
  np.testing.assert_array_equal(ids, np.array(ref["input_ids"]))
  np.testing.assert_array_equal(mask, np.array(ref["attention_mask"]))
  assert ids[2, -1] == 1 and mask[2].sum() == MAX_LEN  # truncated, </s> kept
  assert list(ids[0, :5]) == [3, 4, 5, 1, 0]


def test_tokenizer_missing_folder(tmp_path):
  with pytest.raises(UsageError, match="tokenizer.json"):
    Tokenizer(str(tmp_path))


def test_encode_trims_and_zero_pads(model, tok_dir, rel_err):
  enc = TextEncoder(model, Tokenizer(tok_dir, max_length=MAX_LEN))
  prompts = ["a  red fox jumps", "the lazy dog in snow at night under bright moon a red fox"]
  context, lengths = enc.encode(prompts)
  assert context.shape == (2, MAX_LEN, 24) and context.dtype == np.float32
  np.testing.assert_array_equal(lengths, [5, 14])  # words + </s>
  ids, mask = enc.tokenizer([clean_prompt(p) for p in prompts])
  direct = np.asarray(umt5.forward_t5(model, ids, mask))
  assert np.abs(direct[0, 5:]).max() > 0  # the encoder does emit values at padded positions...
  for b, n in enumerate(lengths):
    assert np.all(context[b, n:] == 0)     # ...which are replaced by exact zeros
    assert rel_err(context[b, :n], direct[b, :n]) <= 1e-6
  # Real-token outputs do not depend on the padded length (padding is masked, the bias is relative).
  longer, lengths2 = TextEncoder(model, Tokenizer(tok_dir, max_length=2 * MAX_LEN + 5)).encode(prompts)
  np.testing.assert_array_equal(lengths2, lengths)
  for b, n in enumerate(lengths):
    assert rel_err(longer[b, :n], context[b, :n]) <= 1e-5


def test_prompt_cache_hit_skips_encoder(model, tok_dir, tmp_path):
  enc = TextEncoder(model, Tokenizer(tok_dir, max_length=MAX_LEN))
  calls = []
  forward = enc._forward
  enc._forward = lambda *a: calls.append(a[1].shape[0]) or forward(*a)
  cache = PromptCache(tmp_path / "cache")
  prompts = ["a red fox", "the lazy dog at night"]
  first, len1 = enc.encode(prompts, cache=cache)
  assert calls == [2] and len(os.listdir(tmp_path / "cache")) == 2
  # Same prompts after cleaning (whitespace, entities): served from disk, the encoder is not called.
  second, len2 = enc.encode(["  a red   fox ", "the&amp;#32;lazy dog\tat night"], cache=cache)
  assert calls == [2]
  np.testing.assert_array_equal(second, first)
  np.testing.assert_array_equal(len2, len1)
  assert enc.stats == {"encoded": 2, "cached": 2}
  # Mixed batch: only the new prompt is encoded.
  mixed, _ = enc.encode(["a red fox", "bright moon"], cache=cache)
  assert calls == [2, 1]
  np.testing.assert_array_equal(mixed[0], first[0])
  # Another encoder identity never sees these entries.
  other = TextEncoder(model, enc.tokenizer, identity="another-model")
  other_calls = []
  other_forward = other._forward
  other._forward = lambda *a: other_calls.append(1) or other_forward(*a)
  other.encode(["a red fox"], cache=cache)
  assert other_calls == [1]


def test_prompt_cache_corrupt_entry_is_recomputed(model, tok_dir, tmp_path):
  enc = TextEncoder(model, Tokenizer(tok_dir, max_length=MAX_LEN), identity="tiny-test")
  cache = PromptCache(tmp_path)
  ref, _ = enc.encode(["red moon"], cache=cache)
  path = cache.path("red moon", "tiny-test")
  with open(path, "r+b") as f:
    f.truncate(20)
  assert cache.get("red moon", "tiny-test") is None
  again, _ = enc.encode(["red moon"], cache=cache)
  np.testing.assert_array_equal(again, ref)
  assert enc.stats["encoded"] == 2 and cache.get("red moon", "tiny-test") is not None


def test_sentencepiece_fallback(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  import io
  text = ["a red fox jumps over the lazy dog", "the moon is bright at night", "snow falls in the forest"] * 50
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=30, pad_id=0,
                                 eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2)
  (tmp_path / "spiece.model").write_bytes(buf.getvalue())
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
  texts = ["a red fox", " ".join(text[:3])]
  ids, mask = Tokenizer(str(tmp_path), max_length=MAX_LEN)(texts)
  short = sp.encode(texts[0])
  np.testing.assert_array_equal(ids[0], short + [1] + [0] * (MAX_LEN - len(short) - 1))
  np.testing.assert_array_equal(mask[0], [1] * (len(short) + 1) + [0] * (MAX_LEN - len(short) - 1))
  np.testing.assert_array_equal(ids[1], sp.encode(texts[1])[:MAX_LEN - 1] + [1])  # truncated, </s> kept
  assert mask[1].all()
