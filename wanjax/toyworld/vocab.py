"""The toy world's closed vocabulary and its word-level `tokenizer.json` (no reference counterpart).

Every word a toy-world prompt may contain is listed here, grouped by grammatical role; `world.py` keys its
geometry and colour tables by these words and `parse_prompt` accepts nothing else. The tokenizer file is a
HF `tokenizers` WordLevel model with a lower-casing normaliser and the `Whitespace` pre-tokeniser
(`\\w+|[^\\w\\s]+`), ids `<pad>`=0, `</s>`=1, `<unk>`=2, then the words in the order below. It carries no
post-processor: `wanjax.text.tokenize.Tokenizer` installs the umT5 template that appends `</s>`, so the toy
world goes through exactly the same front end as the real umT5 tokenizer. The vocabulary (32 ids) fits the
`tiny` umT5 preset (vocab 101).

  python -m wanjax.toyworld.vocab --out DIR      # writes DIR/tokenizer.json
"""

import json
import os

from wanjax import fileio
from wanjax.errors import UsageError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIALS = (PAD, EOS, UNK)

# Word classes. Order matters twice: it fixes the token ids and the order of the vocabulary in error messages.
ARTICLES = ("a", "an")
SIZES = ("small", "large")
COLOURS = ("red", "green", "blue", "yellow", "white", "purple")
SHAPES = ("circle", "square", "triangle", "diamond")
VERBS = ("moves",)
DIRECTION_WORDS = ("left", "right", "up", "down")
SPEEDS = ("slowly", "quickly")
CONNECTIVES = ("and", "while", "on")
BACKGROUND_NOUN = ("background",)
BACKGROUNDS = ("gray", "black", "brown")
PUNCTUATION = (".",)

WORD_CLASSES = {
    "article": ARTICLES, "size": SIZES, "colour": COLOURS, "shape": SHAPES, "verb": VERBS,
    "direction": DIRECTION_WORDS, "speed": SPEEDS, "connective": CONNECTIVES, "noun": BACKGROUND_NOUN,
    "background colour": BACKGROUNDS, "punctuation": PUNCTUATION,
}
WORDS = tuple(w for ws in WORD_CLASSES.values() for w in ws)
assert len(set(WORDS)) == len(WORDS), "a word may belong to one class only"
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
VOCAB_SIZE = len(VOCAB)


def describe_vocabulary() -> str:
  """One line listing every accepted word by class (used in error messages)."""
  return "; ".join(f"{name}: {', '.join(ws)}" for name, ws in WORD_CLASSES.items())


def build_tokenizer():
  """The HF `tokenizers.Tokenizer` for the toy world (WordLevel, lower-case, Whitespace pre-tokeniser)."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
  tok = Tokenizer(models.WordLevel(dict(VOCAB), unk_token=UNK))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(list(SPECIALS))  # already in the vocabulary (ids unchanged); never split or lower-cased
  return tok


def write_tokenizer(folder) -> str:
  """Writes `folder/tokenizer.json` atomically and returns its path."""
  folder = os.fspath(folder)
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise UsageError(f"tokenizer folder {folder!r} is an existing file; give a directory")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "tokenizer.json")
  text = build_tokenizer().to_str(pretty=True)
  with fileio.atomic_open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def read_vocab(path) -> dict:
  """The word → id table of a written tokenizer.json (for checks and tools)."""
  with open(path, encoding="utf-8") as f:
    return dict(json.load(f)["model"]["vocab"])


def main(argv):
  import sys
  from absl import flags
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")
  out = flags.FLAGS.out
  if not out:
    raise UsageError("--out is required (the folder that receives tokenizer.json)")
  path = write_tokenizer(out)
  sys.stdout.write(f"wrote {path} ({VOCAB_SIZE} ids)\n")


def cli_main(argv):
  """`main` as the CLI runs it: a usage error is one line (exit 2), Ctrl-C one line (exit 130)."""
  from infer import cli   # the CLIs' shared flag parsing and exit codes
  cli.call_main(main, argv, "tokenizer.json is written whole or not at all, so no partial file is left")


def run():
  from absl import app, flags
  from infer import cli
  flags.DEFINE_string("out", None, "folder that receives tokenizer.json")

  app.run(cli_main, flags_parser=cli.flags_parser())


if __name__ == "__main__":
  run()
