"""A full-size DiT built for training without `weights` starts from random init: `build_dit` logs one warning naming
the config field to set (it said nothing before). Tiny / toy-world presets (smoke runs, tests, the toy world
trained from scratch) and students that start from their teacher (`role=None`) stay quiet."""

import logging

import pytest

from configs import train_common
from train import models
from wanjax import sharding as shd

FIELD = "--config.models.teacher.weights"


@pytest.fixture
def warnings_seen(caplog):
  caplog.set_level(logging.INFO)
  return lambda: [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _build(mcfg, role):
  return models.build_dit(mcfg, seed=0, mesh=shd.make_mesh("data=1"), role=role)


def test_full_size_model_without_weights_warns_once_naming_the_field(monkeypatch, warnings_seen):
  monkeypatch.setattr(models, "SCRATCH_PRESETS", frozenset())   # the tiny preset stands in for a full-size one
  built = _build(train_common.model("tiny"), "teacher")
  assert built.weights == ""
  assert warnings_seen() == [
      "models.teacher.weights is empty: the tiny teacher starts from random initialisation, so this run trains (or "
      f"distils from) random weights; set {FIELD} to a converted checkpoint (python -m converters.convert)"]


def test_scratch_presets_and_students_from_their_teacher_are_quiet(monkeypatch, warnings_seen):
  assert {"tiny", "tiny_i2v", "toyworld"} <= models.SCRATCH_PRESETS and "t2v_1_3b" not in models.SCRATCH_PRESETS
  _build(train_common.model("tiny"), "teacher")        # smoke / tests
  monkeypatch.setattr(models, "SCRATCH_PRESETS", frozenset())
  _build(train_common.model("tiny"), None)             # e.g. cfg_distill's student: starts from the teacher
  assert warnings_seen() == []
