"""The shipped toy-world checkpoints (`wanjax/toyworld/checkpoints/`, issue 8) against the distillation table.

The table (README; `checkpoints/train_log.json` → `eval`) was measured by `scripts/train_toyworld.py` on the 32
held-out prompts, prompt i with seed `eval_seed + i`. Here the first SUBSET prompts of each half (one-object and
two-object) are sampled again with the same seeds through the same `infer.sample` code, on CPU, and scored with
`score_video`:

- each model's per-video scores reproduce the table's (|Δ| ≤ SCORE_TOL: CPU kernels may differ slightly
  between machines, which can move a detection by a pixel);
- the thresholds of the issue hold on the full table (4-step DMD student ≥ 95 % of the 50-step teacher, the
  teacher at 4 steps clearly lower, the AR student ≥ 90 %), and the student ≥ 95 % of the teacher on the
  subset too, minus the subset's sampling noise (SUBSET_MARGIN).
"""

import json
import os
import sys

import numpy as np
import pytest

from configs.sample import toyworld
from wanjax.toyworld.dataset import HELDOUT_PROMPTS
from wanjax.toyworld.evaluate import score_video

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
LOG = os.path.join(toyworld.ROOT, "train_log.json")
SUBSET = 2                  # prompts per half: 2 one-object + 2 two-object
SCORE_TOL = 0.03            # per-video score vs. the table's
STUDENT_RATIO = 0.95        # DMD 4-step / teacher 50-step (issue 8)
AR_RATIO = 0.90             # Self-Forcing AR / teacher 50-step
TEACHER4_GAP = 0.05         # teacher at 4 steps scores at least this much below the 50-step teacher
SUBSET_MARGIN = 0.05        # subset ratio check: student ≥ STUDENT_RATIO · teacher − SUBSET_MARGIN


@pytest.fixture(scope="module")
def table():
  with open(LOG) as f:
    return json.load(f)["eval"]


def subset_indices():
  return list(range(SUBSET)) + list(range(16, 16 + SUBSET))


def sample_scores(model, seed):
  """Scores of the subset prompts sampled with `model` (seeds as in the table)."""
  from train_toyworld import toyworld_generator
  c, generate = toyworld_generator(model)
  scores = {}
  for i in subset_indices():
    c.prompt = HELDOUT_PROMPTS[i]
    scores[i] = score_video(generate(seed + i), HELDOUT_PROMPTS[i])["score"]
  return scores


@pytest.mark.xfail(strict=True, reason="issue 8 goals not all met by the shipped models: the "
                   "teacher at 4 steps is not clearly below the 50-step teacher (README, Distillation table)")
def test_table_meets_the_issue_goals(table):
  teacher = table["teacher"]["mean_score"]
  assert table["dmd"]["mean_score"] >= STUDENT_RATIO * teacher, table
  assert table["teacher4"]["mean_score"] <= teacher - TEACHER4_GAP, table
  assert "sf" in table and table["sf"]["mean_score"] >= AR_RATIO * teacher, table


def test_table_covers_the_heldout_set(table):
  assert {"teacher", "teacher4", "dmd", "sf"} <= set(table)
  for m, row in table.items():
    assert row["prompts"] == len(HELDOUT_PROMPTS) == len(row["per_video"]), m
    assert abs(np.mean(row["per_video"]) - row["mean_score"]) <= 1e-3, m


@pytest.fixture(scope="module")
def resampled(table):
  return {m: sample_scores(m, table[m]["seed"]) for m in ("teacher", "dmd", "sf")}


@pytest.mark.parametrize("model", ["teacher", "dmd", "sf"])
def test_scores_reproduce_the_table(table, resampled, model):
  want = table[model]["per_video"]
  for i, got in resampled[model].items():
    assert abs(got - want[i]) <= SCORE_TOL, (model, i, got, want[i])


def test_students_hold_their_ratios_on_the_subset(resampled):
  teacher = np.mean(list(resampled["teacher"].values()))
  student = np.mean(list(resampled["dmd"].values()))
  ar = np.mean(list(resampled["sf"].values()))
  assert student >= STUDENT_RATIO * teacher - SUBSET_MARGIN, (student, teacher)
  assert ar >= AR_RATIO * teacher - SUBSET_MARGIN, (ar, teacher)
