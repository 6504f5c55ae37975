"""Toy-world clip folders for the preprocessing pipeline, and the fixed held-out prompt set.

No reference counterpart. `write_dataset` writes `NNNNNN.mp4` (H.264 through `wanjax.video`, or `.npy` float32
in [−1, 1] with `fmt="npy"`, lossless) plus a `NNNNNN.txt` caption sidecar per clip, the toy-world
`tokenizer.json`, and last a `scenes.json` manifest (every clip's placed scene, so ground truth can be
re-rendered at any size). The folder is also a valid `config.data.prompts` (a folder of .txt prompts).

Clip i is drawn from `np.random.default_rng([seed, i])`, so a dataset is a prefix of any larger one with the same
seed. Training scenes never use a held-out prompt: `HELDOUT_PROMPTS` (32 prompts, 16 with one object and 16 with
two, drawn from `HELDOUT_SEED`) are excluded by text, so the held-out set is disjoint from every training seed.

  python -m wanjax.toyworld.dataset --out data/toyworld --n 2000 --seed 0 --frames 17 --size 64
"""

import dataclasses
import json
import os

import numpy as np

from wanjax import fileio
from wanjax.errors import UsageError
from wanjax.toyworld import vocab, world

HELDOUT_SEED = 20_240_917
HELDOUT_PER_COUNT = 16  # prompts with one object, and as many with two
HELDOUT_FILE = os.path.join(os.path.dirname(__file__), "heldout.json")
FORMATS = ("mp4", "npy")


def make_heldout_prompts(seed=HELDOUT_SEED, per_count=HELDOUT_PER_COUNT) -> list:
  """Distinct prompts, `per_count` with one object then `per_count` with two, drawn from `seed`."""
  rng = np.random.default_rng(seed)
  picked = {1: [], 2: []}
  while min(len(v) for v in picked.values()) < per_count:
    spec = world.sample_spec(rng)
    text = world.prompt_for(spec)
    bucket = picked[len(spec.objects)]
    if len(bucket) < per_count and text not in bucket:
      bucket.append(text)
  return picked[1] + picked[2]


def _load_heldout():
  with open(HELDOUT_FILE, encoding="utf-8") as f:
    return tuple(json.load(f)["prompts"])


HELDOUT_PROMPTS = _load_heldout()


def heldout_scene(i: int, seed=HELDOUT_SEED) -> world.Scene:
  """The reference placement of held-out prompt i (ground truth for the evaluator's calibration)."""
  return world.place(world.parse_prompt(HELDOUT_PROMPTS[i]), np.random.default_rng([seed, i]))


def scene_to_json(scene: world.Scene) -> dict:
  return {"background": scene.background, "objects": [dataclasses.asdict(o) for o in scene.objects]}


def scene_from_json(d: dict) -> world.Scene:
  objects = tuple(world.SceneObject(**{**o, "start": tuple(o["start"]) if o.get("start") else None})
                  for o in d["objects"])
  scene = world.Scene(objects=objects, background=d["background"])
  world.check_scene(scene)
  return scene


def _atomic_write(path, write):
  with fileio.atomic_open(path, "wb") as f:
    write(f)


def _check_no_stale_clips(directory, n, fmt):
  """Raises if `directory` holds clips this run would not overwrite (an earlier run with a larger n or the other
  format): readers take every clip in the folder, so they would mix them in."""
  if not os.path.isdir(directory):
    return
  stale = sorted(f for f in os.listdir(directory)
                 if len(f) == 10 and f[:6].isdigit() and f[6:] in (".mp4", ".npy")
                 and (int(f[:6]) >= n or f[7:] != fmt))
  if stale:
    raise UsageError(f"dataset folder {directory} already holds {len(stale)} clip(s) that a run with n={n}, "
                     f"format={fmt} would not rewrite ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); "
                     f"use a new folder or delete them")


def write_dataset(directory, n, seed=0, frames=17, size=64, *, fmt="mp4", exclude_heldout=True) -> list:
  """Writes n clips with caption sidecars, tokenizer.json and scenes.json; returns the clip paths."""
  from tqdm import tqdm
  if n < 1:
    raise UsageError(f"n={n} must be >= 1 clips")
  if fmt not in FORMATS:
    raise UsageError(f"fmt={fmt!r} is not a clip format; valid: {', '.join(FORMATS)}")
  if size < 32 or size % 16:   # checked here to name the flag (`check_video_size` says height and width)
    raise UsageError(f"size={size} must be a multiple of 16 and >= 32 (e.g. 64 or 96)")
  world.check_video_size(frames, size, size)
  directory = os.fspath(directory)
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise UsageError(f"dataset folder {directory!r} is an existing file; give a directory")
  _check_no_stale_clips(directory, n, fmt)
  os.makedirs(directory, exist_ok=True)
  exclude = HELDOUT_PROMPTS if exclude_heldout else ()
  paths, manifest = [], []
  for i in tqdm(range(n), desc="toyworld clips", leave=False):
    scene = world.sample_scene(np.random.default_rng([seed, i]), exclude=exclude)
    video = world.render(scene, frames, size, size)
    name = f"{i:06d}"
    path = os.path.join(directory, f"{name}.{fmt}")
    if fmt == "mp4":
      from wanjax.video import write_video
      write_video(path, video)
    else:
      _atomic_write(path, lambda f, v=video: np.save(f, v))
    prompt = world.prompt_for(scene)
    _atomic_write(os.path.join(directory, f"{name}.txt"), lambda f, p=prompt: f.write(p.encode("utf-8")))
    paths.append(path)
    manifest.append({"name": name, "prompt": prompt, "scene": scene_to_json(scene)})
  vocab.write_tokenizer(directory)
  meta = {"seed": seed, "frames": frames, "height": size, "width": size, "format": fmt,
          "heldout_excluded": bool(exclude_heldout), "clips": manifest}
  _atomic_write(os.path.join(directory, "scenes.json"),
                lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))
  return paths


def main(argv):
  import sys
  from absl import flags
  f = flags.FLAGS
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")
  if not f.out:
    raise UsageError("--out is required (the dataset folder)")
  paths = write_dataset(f.out, f.n, f.seed, f.frames, f.size, fmt=f.format)
  sys.stdout.write(f"wrote {len(paths)} clips, captions, tokenizer.json and scenes.json to {f.out}\n")


def cli_main(argv):
  """`main` as the CLI runs it: a usage error is one line (exit 2), Ctrl-C one line (exit 130)."""
  from absl import flags
  from infer import cli   # the CLIs' shared flag parsing and exit codes
  cli.call_main(main, argv, lambda: (
      f"the clips written so far are kept in {flags.FLAGS.out} (each file whole), but the dataset is incomplete "
      f"(scenes.json is written last); run the same command again to write all of it"))


def run():
  from absl import app, flags
  from infer import cli
  flags.DEFINE_string("out", None, "dataset folder")
  flags.DEFINE_integer("n", 1000, "number of clips")
  flags.DEFINE_integer("seed", 0, "dataset seed (clip i uses rng [seed, i])")
  flags.DEFINE_integer("frames", 17, "frames per clip, 4k+1")
  flags.DEFINE_integer("size", 64, "frame height and width, a multiple of 16")
  flags.DEFINE_enum("format", "mp4", list(FORMATS), "clip file format (npy is lossless)")

  app.run(cli_main, flags_parser=cli.flags_parser())


if __name__ == "__main__":
  run()
