"""Step distillation of a (CFG-distilled) DiT: `consistency` and `half2` modes, with explicit Euler/DDIM steps.

Mirrors distill_wan2.1 `scripts/train/distill_step.py` (spec `post_training.md` A.4). Teacher = the frozen
CFG-distilled model, student initialised from the same weights; both get the same `guidance = w·1000`,
w ~ U{w_min..w_max} per step (reference: cfg 5 -> 3..8). Grids are Wan's UniPC grids
(`schedules.unipc_sigmas`: σ = shift(linspace(0.999, 0, N+1)[:-1]), timesteps = int(1000·σ)), the grids
`infer.sample` samples the result on. Every solver step is the first-order Euler/DDIM step in x0 form
(`post_training.euler_step`), written out instead of the reference's reset-the-UniPC-state trick (A.11).
Losses are pseudo-Huber (c = 0.001) in x0 space.

- `consistency` (LCM/CD without the boundary parametrisation): n ~ U[0, N − k); the student predicts x̂0 at
  t_n; the teacher walks k steps t_n -> t_{n+k}; the target network (EMA student if `use_ema`, else the
  teacher) predicts x̂0 at t_{n+k}; loss = Huber(x̂0_student(t_n), sg(x̂0_target(t_{n+k}))).
- `half2` (halve the step count): teacher grid 2N, student grid N; student node i is teacher node 2i (exactly:
  linspace(a, 0, 2N+1)[2i] == linspace(a, 0, N+1)[i], and the shift is monotone). i ~ U[0, N); the teacher
  steps 2i -> 2i+1, the target network steps 2i+1 -> 2i+2, and the target is that two-step result written in
  x0 form for the student's single step 2i -> 2i+2:  x̂0* = (x_{2i+2} − r·x_{2i}) / (1 − r), r = σ_{2i+2}/σ_{2i}
  (so one student Euler step with x̂0* lands exactly on the teacher's two-step sample; progressive
  distillation). `half2_target="reference"` regresses onto the target network's x̂0(t_{2i+1}) instead, as the
  reference script does.

Not copied: the reference `half` mode adds a term comparing the student's one-grid-step sample (at t_{n+1})
with the target's sample at t_{n+2} — two different noise levels (A.4 [bug]); `half2` is the corrected form.
Indices are drawn per sample (the reference draws one per batch of 1).
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

MODES = ("consistency", "half2")
HALF2_TARGETS = ("two_step", "reference")


def half2_grids(student_steps, shift):
  """((σ_teacher [2N+1], t_teacher [2N]), (σ_student [N+1], t_student [N])) — Wan UniPC grids, float32."""
  st_sig, st_t = schedules.unipc_sigmas(2 * int(student_steps), shift)
  s_sig, s_t = schedules.unipc_sigmas(int(student_steps), shift)
  return (st_sig, st_t.astype(np.float32)), (s_sig, s_t.astype(np.float32))


def consistency_target(teacher, target, x_n, n, *, sigmas, timesteps, k):
  """Teacher walks k Euler steps from node n; returns the target network's x̂0 at node n + k.
  teacher/target(x, t [B]) -> v; n `[B]` int; sigmas `[N+1]`, timesteps `[N]`."""
  sig, ts = jnp.asarray(sigmas, jnp.float32), jnp.asarray(timesteps, jnp.float32)
  x = x_n.astype(jnp.float32)
  for j in range(k):
    s, s_next = sig[n + j], sig[n + j + 1]
    x = pt.euler_step(x, pt.x0_from_v(x, teacher(x, ts[n + j]), s), s, s_next)
  return pt.x0_from_v(x, target(x, ts[n + k]), sig[n + k])


def half2_target(teacher, target, x, i, *, sigmas, timesteps, mode="two_step"):
  """x0-form target for the student's step from teacher node 2i to 2i+2 (see module docstring).
  sigmas/timesteps: the TEACHER grid ([2N+1], [2N]); i `[B]` int student node."""
  if mode not in HALF2_TARGETS:
    raise UsageError(f"half2_target={mode!r}; valid: {', '.join(HALF2_TARGETS)}")
  sig, ts = jnp.asarray(sigmas, jnp.float32), jnp.asarray(timesteps, jnp.float32)
  j = 2 * i
  s0, s1, s2 = sig[j], sig[j + 1], sig[j + 2]
  x = x.astype(jnp.float32)
  x1 = pt.euler_step(x, pt.x0_from_v(x, teacher(x, ts[j]), s0), s0, s1)
  x0b = pt.x0_from_v(x1, target(x1, ts[j + 1]), s1)
  if mode == "reference":
    return x0b
  x2 = pt.euler_step(x1, x0b, s1, s2)
  r = pt.bcast(s2 / s0, x)
  return (x2 - r * x) / (1 - r)


def distill_step(state, batch, *, fn, tx, mode, k, grid, half2_mode, w_range, guided, use_ema_target, huber_c,
                 ema_decay, poison_steps):
  k_w, k_i, k_eps = jax.random.split(pt.step_key(state, 12), 3)
  x0, ctx = batch["latents"], batch["context"]
  b = x0.shape[0]
  w = pt.sample_guidance(k_w, *w_range)
  kw = {"guidance": pt.guidance_input(w, b)} if guided else {}
  teacher = lambda x, t: fn.apply(state.teacher, x, t, ctx, **kw)  # noqa: E731
  tgt_params = state.generator.ema if use_ema_target else state.teacher
  target = lambda x, t: fn.apply(tgt_params, x, t, ctx, **kw)  # noqa: E731
  sig, ts = (jnp.asarray(a, jnp.float32) for a in grid)
  eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
  if mode == "consistency":
    n = jax.random.randint(k_i, (b,), 0, ts.shape[0] - k)
    x_n = pt.add_noise(x0, eps, sig[n])
    tgt = consistency_target(teacher, target, x_n, n, sigmas=sig, timesteps=ts, k=k)
  else:
    i = jax.random.randint(k_i, (b,), 0, ts.shape[0] // 2)
    n = 2 * i
    x_n = pt.add_noise(x0, eps, sig[n])
    tgt = half2_target(teacher, target, x_n, i, sigmas=sig, timesteps=ts, mode=half2_mode)
  tgt = jax.lax.stop_gradient(tgt)

  def loss_fn(params):
    x0_s = pt.x0_from_v(x_n, fn.apply(params, x_n, ts[n], ctx, **kw), sig[n])
    return loop.poison(pt.pseudo_huber(x0_s, tgt, huber_c), state.step, poison_steps)

  loss, grads = jax.value_and_grad(loss_fn)(state.generator.params)
  metrics = {"loss/step_distill": loss, "step/w": w, "step/sigma_mean": jnp.mean(sig[n])}
  return pt.finish_update(state, loss, grads, tx, metrics, ema_decay=ema_decay)


def train(c, workdir, mesh, rules):
  s = c.step_distill
  if s.mode not in MODES:
    raise UsageError(f"step_distill.mode={s.mode!r}; valid: {', '.join(MODES)}")
  if s.use_ema and c.generator.ema_decay <= 0:
    raise UsageError("step_distill.use_ema=True needs generator.ema_decay > 0 (reference: 0.97)")
  if s.w_max < s.w_min:
    raise UsageError(f"step_distill guidance range [{s.w_min}, {s.w_max}] is empty")
  if s.half2_target not in HALF2_TARGETS:
    raise UsageError(f"step_distill.half2_target={s.half2_target!r}; valid: {', '.join(HALF2_TARGETS)}")
  if s.mode == "half2" and int(s.student_steps) < 1:
    raise UsageError(f"step_distill.student_steps={s.student_steps} must be >= 1 (reference: 20)")
  for role in ("teacher", "generator"):
    m = c.models[role]
    pt.check_guidance_embed(m.weights, role, m.guidance_embed,
                            "step distillation starts from a CFG-distilled model (the export of "
                            "configs/train/cfg_distill.py, e.g. runs/cfgd/export)" if m.guidance_embed else
                            f"set models.{role}.guidance_embed=True for it")
  teacher = build_dit(c.models.teacher, seed=c.seed, mesh=mesh, rules=rules, role="teacher")
  if c.models.generator.weights and c.models.generator.weights != c.models.teacher.weights:
    student = build_dit(c.models.generator, seed=c.seed, mesh=mesh, rules=rules)
    if student.cfg != teacher.cfg:
      raise UsageError(f"student config {student.cfg} differs from the teacher's {teacher.cfg}")
  else:
    student = None   # initialised from the teacher (A.4)
  if s.mode == "consistency":
    if not 1 <= s.k < s.interval_steps:
      raise UsageError(f"step_distill.k={s.k} must be in [1, interval_steps={s.interval_steps})")
    sig, ts = schedules.unipc_sigmas(s.interval_steps, s.shift)
    grid = (sig, ts.astype(np.float32))
  else:
    grid = half2_grids(s.student_steps, s.shift)[0]
  tx = optimizer(c.generator)
  ema = c.generator.ema_decay > 0

  def make_state(loaded_teacher, loaded_student):
    tp = loaded_teacher if loaded_teacher is not None else teacher.random_init()
    sp = loaded_student if loaded_student is not None else jax.tree.map(jnp.copy, tp)
    return st.TrainState(step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(c.seed),
                         generator=st.init_trainee(sp, tx, ema=ema), teacher=teacher.frozen(tp))

  abstract_state = jax.eval_shape(make_state, teacher.abstract if teacher.weights else None,
                                  student.abstract if student is not None else None)
  shardings = st.state_shardings(abstract_state, mesh, generator=teacher.shardings, teacher=teacher.shardings,
                                 tx_generator=tx)

  def create():
    loaded_s = student.load(mesh, rules) if student is not None else None
    return jax.jit(make_state, out_shardings=shardings)(teacher.load(mesh, rules), loaded_s)

  source = pt.latent_source(c, teacher.cfg)   # before any prompt is encoded: a bad folder fails fast
  contexts, negative = pt.latent_contexts(c, workdir, teacher.cfg)
  batch_for = pt.latent_batches(c, mesh, rules, contexts, negative, pt.latent_getter(c, source, len(contexts)))
  step = jax.jit(functools.partial(
      distill_step, fn=teacher.fn, tx=tx, mode=s.mode, k=int(s.k), grid=tuple(tuple(map(float, a)) for a in grid),
      half2_mode=s.half2_target, w_range=(s.w_min, s.w_max), guided=teacher.cfg.guidance_embed,
      use_ema_target=bool(s.use_ema), huber_c=s.huber_c, ema_decay=c.generator.ema_decay,
      poison_steps=tuple(c.debug.nonfinite_steps)), donate_argnums=0, out_shardings=(shardings, None))
  state = pt.run(c, workdir, abstract_state=abstract_state, shardings=shardings, create=create,
                 step_fn_for=lambda _: step, batch_for=batch_for, mesh=mesh, rules=rules,
                 lrs=(("generator", c.generator.lr),))
  if c.export:   # the reference saves the EMA model when it has one (A.4)
    params = state.generator.ema if (ema and c.export_ema) else state.generator.params
    pt.export_dit(os.path.join(workdir, c.export), teacher.cfg, params)
  return state
