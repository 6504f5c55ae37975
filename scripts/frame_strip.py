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


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--models", default="teacher,dmd")
  p.add_argument("--prompts", default="16,17", help="held-out prompt indices")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--every", type=int, default=4)
  p.add_argument("--scale", type=int, default=2)
  a = p.parse_args()
  import imageio.v3 as iio
  from train_toyworld import toyworld_generator
  from wanjax.toyworld.dataset import HELDOUT_PROMPTS
  rows, labels = [], []
  for model in a.models.split(","):
    c, generate = toyworld_generator(model)
    for i in (int(x) for x in a.prompts.split(",")):
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
  main()
