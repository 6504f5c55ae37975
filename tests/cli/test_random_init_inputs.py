"""A random-weight demo preset (`tiny`, `self_forcing:runlocal`) refuses model files it would not read."""

import pytest

from configs.sample import self_forcing, tiny
from infer.plan import check
from wanjax.errors import UsageError


@pytest.mark.parametrize("field", ["weights", "text_encoder", "tokenizer", "vae", "clip"])
def test_model_file_under_random_init_is_refused(field):
  c = tiny.get_config()
  c[field] = "/ckpt/model"
  with pytest.raises(UsageError, match=rf"^{field}='/ckpt/model' would not be read: .*random_init=False"):
    check(c)


def test_runlocal_refuses_weights():
  c = self_forcing.get_config("runlocal=True")
  c.weights = "/ckpt/self_forcing_dmd.pt"
  with pytest.raises(UsageError, match="would not be read"):
    check(c)


def test_demo_preset_without_files_plans():
  plan = check(tiny.get_config())
  assert (plan.width, plan.height, plan.frames, plan.weights) == (48, 32, 5, "")
