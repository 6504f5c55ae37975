"""The CLIP converter's head-count error names the CLI flag that fixes it (`--num-heads`)."""

import pytest

from converters.names import clip as clip_names
from wanjax.errors import UsageError


class _Shapes:
  """A checkpoint seen through its tensor shapes only (what `config_from_keys` reads)."""

  def __init__(self, shapes):
    self._shapes = shapes

  def shape(self, key):
    return self._shapes[key]

  def keys(self):
    return list(self._shapes)


def _tiny_hf_bare(width=24):
  name = {row.target: row.sources["hf_bare"] for row in clip_names.TABLE if "hf_bare" in row.sources}
  fc1 = name["blocks.{i}.mlp.fc1.kernel"]
  return _Shapes({name["patch_embedding.kernel"]: (width, 3, 7, 7), name["pos_embedding"]: (17, width),
                  fc1.replace("{i}", "0"): (40, width), fc1.replace("{i}", "1"): (40, width)})


def test_unknown_width_names_the_num_heads_flag():
  with pytest.raises(UsageError, match=r"width 24 .*pass --num-heads"):
    clip_names.config_from_keys(_tiny_hf_bare(), "hf_bare")


def test_num_heads_given_is_used():
  cfg = clip_names.config_from_keys(_tiny_hf_bare(), "hf_bare", num_heads=3)
  assert (cfg["width"], cfg["num_heads"], cfg["num_layers"], cfg["image_size"], cfg["mlp_dim"]) == (24, 3, 2, 28, 40)
