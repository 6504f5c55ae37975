"""Differentiable analytic reward for toy-world frames, computed from the prompt's scene spec (JAX).

The evaluator (`evaluate.py`, `detect.py`) is not differentiable: it thresholds coverage, finds connected
components and matches templates. Reward fine-tuning (DRaFT, spec `post_training.md` A.8) needs a reward whose
gradient reaches the pixels, so this one keeps only smooth statistics of what a prompt fixes (a prompt has no
start positions, so nothing here depends on where objects are):

- soft palette assignment: each pixel p gets weights m_k = softmax_k(−|p − c_k|²/τ²) over the prompt's palette
  {background, object colours} (objects absent from the prompt are masked out);
- `fidelity` = exp(−mean_p softmin_k |p − c_k|² / FIDELITY_SCALE): pixels should be palette colours (penalises
  blur, noise, wrong background and colours that are not in the prompt);
- `area` per object = exp(−|A_k − A*_k| / A*_k), A_k = Σ_p m_k / side² averaged over frames,
  A*_k = π r² of its size class (world.SIZE_RADIUS): the object is there, in its colour, at its size;
- `motion` per object (when ≥ 2 frames are decoded) = exp(−|Δc_k − Δc*_k| / MOTION_SCALE), Δc_k the
  displacement of its soft-mask centroid from the first to the last decoded frame and
  Δc*_k = velocity·(T' − 1)/(T − 1) (world.SPEED_DISTANCE over the whole clip of T frames).

reward = Σ weights·terms (object terms averaged over the prompt's objects; `motion` dropped and the weights
renormalised for one frame) in (0, 1]; ground-truth renders score ≈ 1 (tests). Frames are `[B, T', H, W, 3]`
in [−1, 1], coordinates are fractions of the central square's side as in `world.render`.
"""

import jax
import jax.numpy as jnp
import numpy as np

from wanjax.toyworld import world

TAU = 0.35               # colour softness of the palette assignment (closest palette pair is 1.25 apart)
FIDELITY_SCALE = 0.1     # mean squared distance to the palette that costs a factor e
MOTION_SCALE = 0.05      # displacement error (fraction of the side) that costs a factor e
WEIGHTS = {"fidelity": 0.3, "area": 0.4, "motion": 0.3}
M = world.MAX_OBJECTS


def scene_targets(scene, total_frames):
  """Reward inputs of one prompt (text or Scene) as NumPy arrays: background [3], colours [M, 3], valid [M],
  area [M] (fraction of side²), velocity [M, 2] (displacement over the clip), frames (scalar T)."""
  if isinstance(scene, str):
    scene = world.parse_prompt(scene)
  out = {"background": np.asarray(world.BACKGROUNDS[scene.background], np.float32),
         "colours": np.zeros((M, 3), np.float32), "valid": np.zeros((M,), np.float32),
         "area": np.ones((M,), np.float32), "velocity": np.zeros((M, 2), np.float32),
         "frames": np.float32(total_frames)}
  for i, o in enumerate(scene.objects):
    out["colours"][i] = world.COLOURS[o.colour]
    out["valid"][i] = 1.0
    out["area"][i] = o.area
    out["velocity"][i] = o.velocity
  return out


def batch_targets(prompts, total_frames):
  """Stacked `scene_targets` of a list of prompts: each entry gains a leading [P] axis."""
  rows = [scene_targets(p, total_frames) for p in prompts]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _coords(h, w):
  ox, oy, side = world.frame_square(h, w)
  xs = (np.arange(w, dtype=np.float32) + 0.5 - ox) / side
  ys = (np.arange(h, dtype=np.float32) + 0.5 - oy) / side
  return jnp.asarray(xs), jnp.asarray(ys), float(side)


def reward(frames, targets):
  """frames `[B, T', H, W, 3]` in [−1, 1]; targets: `batch_targets` rows for the batch (leading [B]).
  Returns (reward [B], {term: [B]}), float32, differentiable in `frames`."""
  x = frames.astype(jnp.float32)
  b, t, h, w, _ = x.shape
  palette = jnp.concatenate([targets["background"][:, None], targets["colours"]], axis=1)    # [B, K, 3]
  present = jnp.concatenate([jnp.ones((b, 1)), targets["valid"]], axis=1) > 0                # [B, K]
  d2 = jnp.sum(jnp.square(x[:, :, :, :, None, :] - palette[:, None, None, None]), axis=-1)   # [B, T, H, W, K]
  logits = jnp.where(present[:, None, None, None], -d2 / TAU**2, -jnp.inf)
  soft = jax.nn.softmax(logits, axis=-1)
  softmin = -TAU**2 * jax.nn.logsumexp(logits, axis=-1)                                       # [B, T, H, W]
  fidelity = jnp.exp(-jnp.mean(jnp.maximum(softmin, 0.0), axis=(1, 2, 3)) / FIDELITY_SCALE)

  xs, ys, side = _coords(h, w)
  m = soft[..., 1:]                                                                           # [B, T, H, W, M]
  mass = jnp.sum(m, axis=(2, 3))                                                              # [B, T, M]
  area = jnp.mean(mass, axis=1) / side**2                                                     # [B, M]
  a_t = targets["area"]
  area_term = jnp.exp(-jnp.abs(area - a_t) / a_t)
  valid = targets["valid"]
  n_obj = jnp.maximum(jnp.sum(valid, axis=1), 1.0)
  terms = {"fidelity": fidelity, "area": jnp.sum(area_term * valid, axis=1) / n_obj}
  weights = dict(WEIGHTS)
  if t >= 2:
    eps = 1e-3
    cx = jnp.sum(m * xs[None, None, None, :, None], axis=(2, 3)) / (mass + eps)             # [B, T, M]
    cy = jnp.sum(m * ys[None, None, :, None, None], axis=(2, 3)) / (mass + eps)
    disp = jnp.stack([cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0]], axis=-1)                 # [B, M, 2]
    want = targets["velocity"] * ((t - 1) / (targets["frames"] - 1))[:, None, None]
    err = jnp.sqrt(jnp.sum(jnp.square(disp - want), axis=-1) + 1e-12)
    terms["motion"] = jnp.sum(jnp.exp(-err / MOTION_SCALE) * valid, axis=1) / n_obj
  else:
    weights.pop("motion")
  total = sum(weights.values())
  r = sum(weights[k] * terms[k] for k in weights) / total
  return r, terms
