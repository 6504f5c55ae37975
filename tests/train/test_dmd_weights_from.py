"""DMD configs whose teacher and critic start from the generator's base model (`models.<role>.weights_from`,
configs/train/dmd_bidirectional.py): an empty teacher/critic `weights` takes the generator's; set weights win;
nothing is taken from a generator without weights, and a source of another preset or an unknown role is a
usage error naming the field. The config itself is not changed."""

import pytest

from configs.train import dmd_bidirectional
from train.distill import role_model
from wanjax.errors import UsageError


def _models(**weights):
  c = dmd_bidirectional.get_config("smoke=True")
  for role, w in weights.items():
    c.models[role].weights = w
  return c.models


def test_teacher_and_critic_take_the_generators_weights():
  models = _models(generator="/ckpt/base")
  assert role_model(models, "teacher").weights == "/ckpt/base" and role_model(models, "critic").weights == "/ckpt/base"
  assert models.teacher.weights == "" and models.critic.weights == ""          # the config is left as given
  assert role_model(_models(generator="/ckpt/base", critic="/ckpt/c"), "critic").weights == "/ckpt/c"
  assert role_model(_models(), "teacher").weights == ""                       # no generator weights: random init
  assert role_model(models, "generator").weights == "/ckpt/base"


def test_bad_weights_from_is_a_usage_error():
  models = _models(generator="/ckpt/base")
  models.teacher.weights_from = "nobody"
  with pytest.raises(UsageError, match="models.teacher.weights_from='nobody' names no other model"):
    role_model(models, "teacher")
  models = _models(generator="/ckpt/base")
  models.critic.preset = "t2v_14b"
  with pytest.raises(UsageError, match="set --config.models.critic.weights"):
    role_model(models, "critic")
