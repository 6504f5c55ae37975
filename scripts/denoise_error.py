"""How much a toy-world DiT's x0 prediction already fixes the clip at each noise level (docs/toyworld.md).

  python scripts/denoise_error.py                                   # the shipped teacher, 32 held-out scenes
  python scripts/denoise_error.py --root /tmp/tw/checkpoints --weights dmd --seeds 2

Renders held-out scenes (prompt i, seed k), encodes them with the checkpoint set's VAE and umT5, noises the
latents to each σ (x_t = (1 − σ) x0 + σ ε, one fixed ε per clip) and prints the mean squared error of the model's
x0 = x_t − σ·v, with the prompt's context and with the negative prompt's, next to the latent variance. Where
the error is a small fraction of the variance at large σ, the noisy clip already determines the sample, the
probability-flow ODE is nearly straight and few-step sampling loses little: the check to run on a new teacher
before distilling it. One JSON line at the end.
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from infer import cli  # noqa: E402  (one `error:` line, exit 2 for a bad flag or checkpoint)
from wanjax.errors import UsageError  # noqa: E402
SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.98)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default=os.path.join(REPO, "wanjax", "toyworld", "checkpoints"),
                 help="checkpoint set (umt5, tokenizer, vae and the DiT dirs)")
  p.add_argument("--weights", default="teacher", help="DiT dir under --root (or a path)")
  p.add_argument("--prompts", type=int, default=32, help="first N held-out prompts")
  p.add_argument("--seeds", type=int, default=1, help="scenes per prompt")
  p.add_argument("--sigmas", default=",".join(str(s) for s in SIGMAS))
  p.add_argument("--frames", type=int, default=17)
  p.add_argument("--size", type=int, default=64)
  a = p.parse_args()
  try:
    sigmas = [float(s) for s in a.sigmas.split(",")]
  except ValueError:
    sigmas = [-1.0]
  if not all(0.0 < s <= 1.0 for s in sigmas):
    p.error(f"--sigmas {a.sigmas}: expected comma-separated numbers, each in (0, 1]")

  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs.common import negative_prompt
  from wanjax import sharding
  from wanjax.dit.load import load_dit
  from wanjax.sampling import model_denoiser
  from wanjax.text.encode import load_text_encoder
  from wanjax.toyworld import world
  from wanjax.toyworld.dataset import HELDOUT_PROMPTS
  from wanjax.vae.load import load_vae
  from wanjax.vae.model import encode_video

  if not 1 <= a.prompts <= len(HELDOUT_PROMPTS) or a.seeds < 1:
    p.error(f"--prompts must be in 1..{len(HELDOUT_PROMPTS)} and --seeds >= 1")
  mesh = sharding.make_mesh("data=-1")
  weights = a.weights if os.path.isdir(a.weights) else os.path.join(a.root, a.weights)
  dit = load_dit(weights, policy="float32", mesh=mesh)
  vae = load_vae(os.path.join(a.root, "vae"), mesh=mesh)
  encoder = load_text_encoder(os.path.join(a.root, "umt5"), os.path.join(a.root, "tokenizer"), mesh=mesh,
                              max_length=dit.cfg.text_len)
  prompts = [HELDOUT_PROMPTS[i] for i in range(a.prompts)] * a.seeds
  scenes = [world.place(world.parse_prompt(t), np.random.default_rng([j % a.prompts, j // a.prompts]))
            for j, t in enumerate(prompts)]
  x0 = jnp.concatenate([encode_video(vae, world.render(s, a.frames, a.size, a.size)[None]) for s in scenes])
  ctx, _ = encoder.encode(prompts + [negative_prompt(dit.cfg.model_type, "")])
  ctx = jnp.asarray(ctx, jnp.float32)
  cond, neg = ctx[:-1], jnp.broadcast_to(ctx[-1:], ctx[:-1].shape)
  denoise, params = model_denoiser(dit)
  eps = jax.random.normal(jax.random.key(0), x0.shape, jnp.float32)

  @jax.jit
  def errors(params, sigma):
    x_t = (1.0 - sigma) * x0 + sigma * eps
    t = jnp.full((x0.shape[0],), sigma * 1000.0)
    out = []
    for c in (cond, neg):
      v = denoise(params, x_t, t, {"context": c})
      out.append(jnp.mean(jnp.square(x_t - sigma * v - x0)))
    return jnp.stack(out)

  var = float(jnp.mean(jnp.square(x0 - x0.mean(0))))
  rows = []
  print(f"{len(prompts)} clips, latent {tuple(x0.shape[1:])}, latent variance {var:.3f}; x0 mean squared error:")
  print(f"{'sigma':>6} {'prompt':>9} {'negative':>9} {'prompt / variance':>18}")
  for s in sigmas:
    e_cond, e_neg = (float(v) for v in errors(params, jnp.float32(s)))
    rows.append({"sigma": s, "x0_mse": e_cond, "x0_mse_negative": e_neg})
    print(f"{s:>6.2f} {e_cond:>9.4f} {e_neg:>9.4f} {e_cond / var:>18.3f}")
  print(json.dumps({"weights": weights, "clips": len(prompts), "latent_variance": var, "rows": rows}))


if __name__ == "__main__":
  try:
    main()
  except UsageError as e:   # a missing or mismatched checkpoint
    cli.fail(e)
