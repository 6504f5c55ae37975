"""Prints the README's toy-world distillation table (markdown) from a `train_log.json` eval section.

  python scripts/toyworld_table.py                                  # the shipped wanjax/toyworld/checkpoints
  python scripts/toyworld_table.py --log /tmp/tw/checkpoints/train_log.json

Rows in a fixed order (those the log lacks are left out); "Δ vs teacher" is the paired mean difference from the
50-step teacher over the same (prompt, seed) videos ± its standard error (`train_toyworld.paired_vs_teacher`).
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from infer import cli  # noqa: E402  (one `error:` line, exit 2 for a log that cannot be used)
ROWS = (
    ("teacher", "teacher, 50-step UniPC + CFG 4"),
    ("teacher4", "teacher, 4-step UniPC + CFG 4"),
    ("teacher2", "teacher, 2-step UniPC + CFG 4"),
    ("teacher1", "teacher, 1 step + CFG 4"),
    ("teacher_dmd_sampler", "teacher, the DMD student's 4-step sampler + CFG 4"),
    ("dmd", "DMD student, 4 steps, CFG-free"),
    ("dmd2", "DMD student, 2 steps, CFG-free"),
    ("dmd1", "DMD student, 1 step, CFG-free"),
    ("sf", "Self-Forcing AR student, 5 blocks of 1 latent frame, 4 steps, KV cache"),
)
TERMS = ("colour", "shape", "direction", "sharpness")


def table(ev) -> str:
  t = ev["teacher"]["mean_score"]
  lines = ["| model | mean score | vs teacher | Δ vs teacher (paired ± s.e.) | accuracy | "
           + " | ".join(TERMS) + " | s / video (CPU) |",
           "|---|---|---|---|---|" + "---|" * len(TERMS) + "---|"]
  for key, name in ROWS:
    if key not in ev:
      continue
    e = ev[key]
    p = e.get("vs_teacher")
    delta = f"{p['mean_diff']:+.3f} ± {p['se_diff']:.3f}" if p and p.get("se_diff") is not None else "—"
    terms = " | ".join(f"{e['mean_terms'][k]:.2f}" for k in TERMS)
    lines.append(f"| {name} | {e['mean_score']:.3f} | {e['mean_score'] / t * 100:.0f} % | {delta} | "
                 f"{e['accuracy']:.2f} | {terms} | {e['seconds_per_video']:.2f} |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--log", default=os.path.join(REPO, "wanjax", "toyworld", "checkpoints", "train_log.json"))
  a = p.parse_args()
  try:
    with open(a.log) as f:
      ev = json.load(f).get("eval", {})
  except OSError as e:
    cli.fail(f"--log {a.log}: cannot read it ({e.strerror or e}); pass a train_log.json of scripts/train_toyworld.py")
  except (ValueError, AttributeError) as e:
    cli.fail(f"--log {a.log}: not a train_log.json ({e})")
  if not isinstance(ev, dict) or "teacher" not in ev:
    cli.fail(f"--log {a.log}: the eval section has no 'teacher' row (run scripts/train_toyworld.py --stages eval)")
  print(table(ev))


if __name__ == "__main__":
  main()
