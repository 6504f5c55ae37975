"""`config.json` of every model family (`wanjax.config_json`): the dataclass round-trips, an unknown field is one
error naming it and the valid ones, a file of another family is refused, the converter's bookkeeping keys pass."""

import json
import re

import pytest

from wanjax.dit.config import DiTConfig, PRESETS as DIT
from wanjax.errors import UsageError
from wanjax.image.clip import CLIPVisionConfig, PRESETS as CLIP
from wanjax.text.umt5 import PRESETS as UMT5, UMT5Config
from wanjax.vae.config import PRESETS as VAE, VAEConfig

FAMILIES = [(DiTConfig, DIT["tiny"], "DiT", None), (VAEConfig, VAE["tiny"], "VAE", None),
            (UMT5Config, UMT5["tiny"], "umT5", "an umT5 encoder"),
            (CLIPVisionConfig, CLIP["tiny"], "CLIP", "a CLIP image encoder")]


@pytest.mark.parametrize("cls, cfg, what, family", FAMILIES)
def test_round_trip_bookkeeping_unknown_and_family(cls, cfg, what, family, tmp_path):
  d = cfg.to_json_dict()
  path = tmp_path / "config.json"
  path.write_text(json.dumps(d))
  assert cls.load(str(path)) == cfg
  assert cls.from_json_dict(dict(d, source_layout="diffusers") if what != "DiT" else dict(d, name="t2v")) == cfg
  with pytest.raises(UsageError, match=re.escape(f"unknown {what} config fields ['colour']; valid: ")):
    cls.from_json_dict(dict(d, colour=1))
  if family is not None:
    with pytest.raises(UsageError, match=re.escape(f"config family 'vae' is not {family}")):
      cls.from_json_dict(dict(d, family="vae"))
