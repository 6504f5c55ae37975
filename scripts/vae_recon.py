"""How well toy-world VAEs reconstruct held-out clips, objects included (docs/toyworld.md).

  python scripts/vae_recon.py                                       # the shipped VAE, 16 held-out scenes
  python scripts/vae_recon.py --vae /tmp/run/checkpoints/vae,wanjax/toyworld/checkpoints/vae

Renders held-out scenes (prompt i, placement seed k, as scripts/denoise_error.py), encodes them to mu and decodes
them with each VAE (the chunked inference path), and prints per VAE: the PSNR over all pixels, the PSNR over the
foreground pixels (those of the render that differ from its median colour by more than 0.1, as the VAE's
foreground-weighted loss), and the detector score (`wanjax.toyworld.evaluate`) of the reconstructions next to
that of the renders. A VAE that keeps only the backgrounds reaches a fair whole-frame PSNR with a low foreground
PSNR and a score near the empty-video floor; check it before preprocessing features for a teacher. One JSON
line at the end.
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from infer import cli  # noqa: E402  (one `error:` line, exit 2 for a bad flag or checkpoint)
from wanjax.errors import UsageError  # noqa: E402


def psnr(mse):
  import math
  return 10.0 * math.log10(4.0 / max(mse, 1e-12))   # peak-to-peak 2 in [-1, 1]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--vae", default=os.path.join(REPO, "wanjax", "toyworld", "checkpoints", "vae"),
                 help="comma-separated VAE dirs (train.export output)")
  p.add_argument("--prompts", type=int, default=16, help="first N held-out prompts")
  p.add_argument("--seeds", type=int, default=1, help="scenes per prompt")
  p.add_argument("--frames", type=int, default=17)
  p.add_argument("--size", type=int, default=64)
  a = p.parse_args()

  import jax
  import numpy as np
  from train.vae import foreground_mask
  from wanjax import sharding
  from wanjax.toyworld import evaluate, world
  from wanjax.toyworld.dataset import HELDOUT_PROMPTS
  from wanjax.vae.load import load_vae
  from wanjax.vae.model import decode_latent, encode_video

  if not 1 <= a.prompts <= len(HELDOUT_PROMPTS) or a.seeds < 1:
    p.error(f"--prompts must be in 1..{len(HELDOUT_PROMPTS)} and --seeds >= 1")
  dirs = [d.strip() for d in a.vae.split(",") if d.strip()]
  for d in dirs:
    if not os.path.isfile(os.path.join(d, "config.json")):
      p.error(f"--vae {d!r}: not a VAE dir (no config.json; train.export writes one)")
  prompts = [HELDOUT_PROMPTS[i] for i in range(a.prompts)] * a.seeds
  scenes = [world.place(world.parse_prompt(t), np.random.default_rng([j % a.prompts, j // a.prompts]))
            for j, t in enumerate(prompts)]
  renders = np.stack([world.render(s, a.frames, a.size, a.size) for s in scenes]).astype(np.float32)
  fg = foreground_mask(renders, xp=np)[..., 0]                                  # [N, T, H, W], as the VAE loss
  truth = float(np.mean([evaluate.score_video(v, t)["score"] for v, t in zip(renders, prompts)]))
  mesh = sharding.make_mesh("data=-1")
  rows = []
  print(f"{len(prompts)} held-out clips {renders.shape[1:]}, foreground {fg.mean():.1%} of the pixels, "
        f"render score {truth:.3f}")
  print(f"{'PSNR':>7} {'fg PSNR':>8} {'score':>6}  vae")
  for d in dirs:
    vae = load_vae(d, mesh=mesh)
    rec = np.concatenate([np.asarray(jax.device_get(decode_latent(vae, encode_video(vae, v[None]))), np.float32)
                          for v in renders])
    rec = np.clip(rec, -1.0, 1.0)
    err = (rec - renders) ** 2
    row = {"vae": d, "psnr": round(psnr(float(err.mean())), 2),
           "fg_psnr": round(psnr(float(err.mean(-1)[fg].mean())), 2),
           "score": round(float(np.mean([evaluate.score_video(v, t)["score"] for v, t in zip(rec, prompts)])), 4)}
    rows.append(row)
    print(f"{row['psnr']:>7.2f} {row['fg_psnr']:>8.2f} {row['score']:>6.3f}  {d}")
  print(json.dumps({"clips": len(prompts), "render_score": round(truth, 4), "rows": rows}))


if __name__ == "__main__":
  try:
    main()
  except UsageError as e:   # a VAE folder that cannot be loaded
    cli.fail(e)
