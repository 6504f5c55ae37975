"""CFG distillation: a guidance-embedded student learns the teacher's classifier-free-guided velocity in one pass.

Mirrors distill_wan2.1 `scripts/train/distill_cfg.py` (spec `post_training.md` A.2–A.3):
  w ~ U{w_min..w_max} per step (the same w for the whole batch); σ from the 50-point Euler grid of the shifted
  1000-step table (indices 19, 39, …, 999, i.e. σ_k = shift(k/50), k = 1..50), one index per sample;
  x_σ = (1 − σ)·x0 + σ·ε, t = 1000·σ;
  target = v_u + w·(v_c − v_u) from the frozen teacher (cond and uncond as one batch of two, no gradient);
  student v = student(x_σ, t, context, guidance = w·1000);  loss = pseudo-Huber(v, target), c = 0.001.
The student is the teacher's weights plus the guidance MLP, whose last Linear is zero-initialised
(`WanDiT(cfg with guidance_embed=True)`), so at step 0 it reproduces the conditional teacher exactly — not the
reference's Xavier-random guidance MLP (A.2 [bug]). After training, sampling needs one forward per step:
`infer.sample --config.guidance=w` on the exported model (`<workdir>/export`).

Differences kept on purpose: the unconditional branch uses `data.negative_prompt` (Wan's default negative
prompt when empty, as `infer.sample`'s CFG does), where the reference used T5("") from `null.pt`.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from train import loop
from train import post_training as pt
from train import state as st
from train.distill import optimizer
from train.models import build_dit
from wanjax import schedules
from wanjax.errors import UsageError


def euler_grid_sigmas(shift, num=50):
  """The σ values FastVideo's `EulerSolver(sigmas, 1000, euler_timesteps=num)` keeps from diffusers'
  `FlowMatchEulerDiscreteScheduler(shift)`: the ascending shifted table `shift((i + 1)/1000)` at indices
  `(k·1000/num) − 1`, k = 1..num, i.e. σ_k = shift(k/num); float32 `[num]`, ascending."""
  if 1000 % int(num):
    raise UsageError(f"cfg_distill.grid_points={num} must divide 1000 (reference: 50)")
  base = np.arange(1, 1001, dtype=np.float32)[::-1] / np.float32(1000)            # diffusers' sigmas, descending
  table = schedules.shift_sigmas(base, np.float32(shift)).astype(np.float32)[::-1]  # ascending
  idx = np.arange(1, int(num) + 1) * (1000 // int(num)) - 1
  return table[idx]


def cfg_target(v_cond, v_uncond, w):
  """Standard CFG `v_u + w·(v_c − v_u)` in float32 (A.3)."""
  v_cond, v_uncond = v_cond.astype(jnp.float32), v_uncond.astype(jnp.float32)
  return v_uncond + w * (v_cond - v_uncond)


def student_from_teacher(teacher_params, student_params):
  """Student params: the teacher's everywhere, plus the student's own (fresh) `guidance_embedding`."""
  extra = sorted(set(student_params) - set(teacher_params))
  missing = sorted(set(teacher_params) - set(student_params))
  if extra != ["guidance_embedding"] or missing:
    raise UsageError(f"the student must be the teacher plus a guidance embedding; student-only {extra}, "
                     f"teacher-only {missing}")
  out = jax.tree.map(jnp.copy, dict(teacher_params))
  out["guidance_embedding"] = student_params["guidance_embedding"]
  return out


def cfg_step(state, batch, *, student_fn, teacher_fn, tx, sigmas, w_range, huber_c, ema_decay, poison_steps):
  k_w, k_i, k_eps = jax.random.split(pt.step_key(state, 11), 3)
  x0, ctx = batch["latents"], batch["context"]
  b = x0.shape[0]
  w = pt.sample_guidance(k_w, *w_range)
  sigma = jnp.asarray(sigmas)[jax.random.randint(k_i, (b,), 0, len(sigmas))]
  t = sigma * 1000.0
  x_t = pt.add_noise(x0, jax.random.normal(k_eps, x0.shape, jnp.float32), sigma)
  negs = jnp.broadcast_to(batch["negative"], ctx.shape)
  vv = teacher_fn.apply(state.teacher, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                        jnp.concatenate([ctx, negs]))
  target = jax.lax.stop_gradient(cfg_target(vv[:b], vv[b:], w))
  g = pt.guidance_input(w, b)

  def loss_fn(params):
    v = student_fn.apply(params, x_t, t, ctx, guidance=g)
    return loop.poison(pt.pseudo_huber(v, target, huber_c), state.step, poison_steps)

  loss, grads = jax.value_and_grad(loss_fn)(state.generator.params)
  metrics = {"loss/cfg_distill": loss, "cfg/w": w, "cfg/sigma_mean": jnp.mean(sigma)}
  return pt.finish_update(state, loss, grads, tx, metrics, ema_decay=ema_decay)


def train(c, workdir, mesh, rules):
  d = c.cfg_distill
  pt.check_guidance_embed(c.models.teacher.weights, "teacher", False,
                          "CFG distillation starts from a plain Wan DiT (the two-pass CFG teacher); a distilled one "
                          "is step_distill's teacher or reward_lora's generator")
  pt.check_guidance_embed(c.models.generator.weights, "generator", True,
                          "leave models.generator.weights empty (the student starts from the teacher) or give "
                          "a CFG-distilled export")
  teacher = build_dit(pt.guided(c.models.teacher, False), seed=c.seed, mesh=mesh, rules=rules, role="teacher")
  student = build_dit(pt.guided(c.models.generator, True), seed=c.seed + 1, mesh=mesh, rules=rules)
  if d.w_min < 1 or d.w_max < d.w_min:
    raise UsageError(f"cfg_distill guidance range [{d.w_min}, {d.w_max}] must satisfy 1 <= w_min <= w_max "
                     f"(reference: 1..8)")
  sigmas = euler_grid_sigmas(d.shift, d.grid_points)
  tx = optimizer(c.generator)
  ema = c.generator.ema_decay > 0

  def make_state(loaded_teacher, loaded_student):
    tp = loaded_teacher if loaded_teacher is not None else teacher.random_init()
    sp = loaded_student if loaded_student is not None else student_from_teacher(tp, student.random_init())
    return st.TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(c.seed),
                         generator=st.init_trainee(sp, tx, ema=ema), teacher=teacher.frozen(tp))

  abstract_state = jax.eval_shape(make_state, teacher.abstract if teacher.weights else None,
                                  student.abstract if student.weights else None)
  shardings = st.state_shardings(abstract_state, mesh, generator=student.shardings, teacher=teacher.shardings,
                                 tx_generator=tx)

  def create():
    return jax.jit(make_state, out_shardings=shardings)(teacher.load(mesh, rules), student.load(mesh, rules))

  source = pt.latent_source(c, teacher.cfg)   # before any prompt is encoded: a bad folder fails fast
  contexts, negative = pt.latent_contexts(c, workdir, teacher.cfg)
  get = pt.latent_getter(c, source, len(contexts))
  batch_for = pt.latent_batches(c, mesh, rules, contexts, negative, get)
  step = jax.jit(functools.partial(cfg_step, student_fn=student.fn, teacher_fn=teacher.fn, tx=tx,
                                   sigmas=tuple(float(s) for s in sigmas), w_range=(d.w_min, d.w_max),
                                   huber_c=d.huber_c, ema_decay=c.generator.ema_decay,
                                   poison_steps=tuple(c.debug.nonfinite_steps)),
                 donate_argnums=0, out_shardings=(shardings, None))
  state = pt.run(c, workdir, abstract_state=abstract_state, shardings=shardings, create=create,
                 step_fn_for=lambda s: step, batch_for=batch_for, mesh=mesh, rules=rules,
                 lrs=(("generator", c.generator.lr),))
  if c.export:   # relative to the workdir unless absolute
    params = state.generator.ema if (ema and c.export_ema) else state.generator.params
    pt.export_dit(os.path.join(workdir, c.export), student.cfg, params)
  return state
