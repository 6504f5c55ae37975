"""A PNG frame strip of toy-world samples for the README: one row per (model, prompt), every `--every`-th frame.

  python scripts/frame_strip.py --out docs/toyworld_strip.png --models teacher,dmd --prompts 16,17 --seed 0
Models and prompts as `configs/sample/toyworld.py` (held-out prompt indices); frames upscaled by `--scale`.
"""

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))
from infer import cli  # noqa: E402  (one `error:` line, exit 2 for a bad flag or checkpoint)
from wanjax.errors import UsageError  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--models", default="teacher,dmd")
  p.add_argument("--prompts", default="16,17", help="held-out prompt indices")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--every", type=int, default=4)
  p.add_argument("--scale", type=int, default=2)
  a = p.parse_args()
  from configs.sample import toyworld
  from wanjax.toyworld.dataset import HELDOUT_PROMPTS
  try:
    indices = [int(x) for x in a.prompts.split(",")]
  except ValueError:
    indices = []
  if not indices or not all(0 <= i < len(HELDOUT_PROMPTS) for i in indices):
    p.error(f"--prompts {a.prompts!r}: expected comma-separated held-out prompt indices in "
            f"0..{len(HELDOUT_PROMPTS) - 1}")
  models = a.models.split(",")
  for model in models:   # checked before any model is loaded
    try:
      toyworld.get_config(f"model={model}")
    except UsageError as e:
      cli.fail(f"--models: {e}")
  import imageio.v3 as iio
  from train_toyworld import toyworld_generator
  rows, labels = [], []
  for model in models:
    c, generate = toyworld_generator(model)
    for i in indices:
      c.prompt = HELDOUT_PROMPTS[i]
      video = np.asarray(generate(a.seed + i))                    # [T, H, W, 3] in [-1, 1]
      frames = video[::a.every]
      gap = np.ones((frames.shape[1], 2, 3), np.float32)
      row = np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=1)
      rows.append(row)
      labels.append(f"{model}: {HELDOUT_PROMPTS[i]}")
  sep = np.ones((2, rows[0].shape[1], 3), np.float32)
  img = np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)
  img = np.repeat(np.repeat(img, a.scale, 0), a.scale, 1)
  img = np.round((np.clip(img, -1, 1) + 1) * 127.5).astype(np.uint8)
  tmp = a.out + ".tmp.png"
  iio.imwrite(tmp, img)
  os.replace(tmp, a.out)
  sys.stdout.write("rows (top to bottom):\n" + "\n".join(labels) + "\n")


if __name__ == "__main__":
  try:
    main()
  except UsageError as e:   # a missing or mismatched checkpoint
    cli.fail(e)
