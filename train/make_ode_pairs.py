r"""Teacher ODE trajectories for ODE-initialisation (`train.distill` with `configs/train/ode_init.py`).

Mirrors CausVid `causvid/models/wan/generate_ode_pairs.py` and Self-Forcing `scripts/generate_ode_pairs.py`
(spec `distillation.md` §2.1): per prompt, noise x_T ~ N(0, I); the bidirectional teacher samples with CFG
(standard form, scale 6: `v = v_u + 6 (v_c − v_u)`, the same as CFG on x0) with a flow-matching solver
(Euler on `sigma_i = shift(1 − i/N)`, as the reference, or Wan's UniPC); the latents **before** the steps whose
sigma equals one of the student's sigmas, plus the final latent, are kept. With the ode_init defaults (list
[1000, 750, 500, 250] warped at shift 8, 48 Euler steps at shift 8) those are steps [0, 12, 24, 36] and 48.

The student list, teacher preset and weights, prompts, text encoder, latent size and seed come from the
ode_init config (the teacher is `models.teacher` when the config has one, else `models.generator`: CausVid's
teacher is the base model the student starts from; the reference samples it in fp32, so pass
`--config.models.generator.precision=float32` to match); the sampler settings are flags.

Output folder: `shard-NNNNN.safetensors` with `latents` `[n, K, F, H, W, 16]`, `context` `[n, S, D]` and
`prompt_index` `[n]`, each written atomically, plus `ode_pairs.json` (settings + finished shards), rewritten
atomically after every shard. Noise of sample i is `normal(fold_in(key(seed), i))`, so a resumed run (same
command) skips the finished shards and produces exactly what an uninterrupted run would.

  python -m train.make_ode_pairs --config configs/train/ode_init.py --output ode_pairs/ \
      --config.models.generator.weights=ckpt/t2v_1_3b --config.data.prompts=prompts.txt \
      --config.data.text_encoder=ckpt/umt5 --config.data.tokenizer=ckpt/tokenizer
  python -m train.distill --config configs/train/ode_init.py --config.data.trajectories=ode_pairs/ ...
Smoke (tiny random teacher, random prompts, CPU; a teacher without weights gets a random output head, see
`moving_head`, so that its trajectories move):
  python -m train.make_ode_pairs --config configs/train/ode_init.py:smoke=True --output /tmp/pairs --num_steps=8
"""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging

from train import data, features
from train.checkpoints import WriteFailedError, check_writable, write_failure
from train.distill import batch_sharding, dmd_settings
from train.models import build_dit
from wanjax import checkpoint, schedules
from wanjax import sharding as shd
from wanjax.errors import UsageError
from wanjax.solvers import get_solver

FORMAT, VERSION, INDEX = "wanjax-ode-pairs", 1, "ode_pairs.json"
SOLVERS = ("euler", "unipc")
DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
SIGMA_TOL = 1e-3      # a student sigma must lie this close to a teacher grid sigma
RANDOM_HEAD_GAIN = 0.5   # std of a random teacher's output-head kernel, times 1/sqrt(dim) (`moving_head`)


def teacher_grid(solver, num_steps, shift):
  """(sigmas float32 [N+1] ending in 0, timesteps float32 [N]) of the teacher sampler.

  euler: CausVid/SF `FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True).set_timesteps(N)`:
  sigma_i = shift(linspace(1, 0, N+1)[i]), t = 1000 sigma (floats). unipc: Wan's own grid (`unipc_sigmas`).
  """
  if solver not in SOLVERS:
    raise UsageError(f"--solver={solver!r}; valid: {', '.join(SOLVERS)}")
  if solver == "unipc":
    sigmas, timesteps = schedules.unipc_sigmas(num_steps, shift)
    return sigmas, timesteps.astype(np.float32)
  if num_steps < 1:
    raise UsageError(f"--num_steps={num_steps} must be >= 1 (the reference uses 48)")
  base = np.linspace(1.0, 0.0, num_steps + 1)[:-1].astype(np.float32)
  sig = schedules.shift_sigmas(base, np.float32(shift)).astype(np.float32)
  return np.concatenate([sig, [0.0]]).astype(np.float32), (sig * np.float32(1000)).astype(np.float32)


def keep_indices(student_sigmas, teacher_sigmas, *, tol=SIGMA_TOL):
  """For each student sigma (ending in 0), the index of the teacher state (before step i; N = final) at that
  sigma. Raises naming every sigma that is not on the teacher grid."""
  teacher_sigmas = np.asarray(teacher_sigmas, np.float64)
  idx = [int(np.argmin(np.abs(teacher_sigmas - s))) for s in student_sigmas]
  bad = [f"{s:.5f} (nearest {teacher_sigmas[i]:.5f})" for s, i in zip(student_sigmas, idx)
         if abs(teacher_sigmas[i] - s) > tol]
  if bad:
    raise UsageError(f"student sigmas {', '.join(bad)} are not on the teacher's {len(teacher_sigmas) - 1}-step "
                     f"grid; choose --num_steps/--sample_shift so they are (e.g. 48 steps at the list's shift)")
  if idx != sorted(set(idx)):
    raise UsageError(f"student sigmas {list(student_sigmas)} map to teacher states {idx}; they must be distinct")
  return idx


def trajectory(fn, solver, num_slots, params, noise, context, negative, sigmas, timesteps, slots, scale):
  """Teacher sampling with CFG, recording states. slots int32 [N+1]: the trajectory slot (< num_slots) of the
  state before step i (i = N: the final latent), or −1. Returns [B, num_slots, F, H, W, C] float32."""
  b = noise.shape[0]
  n = timesteps.shape[0]
  both = jnp.concatenate([context, jnp.broadcast_to(negative, context.shape)])

  def record(traj, x, i):
    s = slots[i]
    upd = jax.lax.dynamic_update_slice(traj, x[:, None], (0, jnp.maximum(s, 0)) + (0,) * (x.ndim - 1))
    return jnp.where(s >= 0, upd, traj)

  def body(i, carry):
    x, state, traj = carry
    traj = record(traj, x, i)
    t = jnp.full((2 * b,), timesteps[i])
    vv = fn.apply(params, jnp.concatenate([x, x]), t, both).astype(jnp.float32)
    v = vv[b:] + scale * (vv[:b] - vv[b:])       # standard CFG (§2.1), float32
    x, state = solver.step(state, x, v, i, sigmas, None)
    return x, state, traj

  x = noise.astype(jnp.float32)
  traj = jnp.zeros((b, num_slots) + x.shape[1:], jnp.float32)
  x, _, traj = jax.lax.fori_loop(0, n, body, (x, solver.init_state(x), traj))
  return record(traj, x, n)



def _read_index(output, settings):
  path = os.path.join(output, INDEX)
  if not os.path.exists(path):
    return {"format": FORMAT, "version": VERSION, "settings": settings, "shards": []}
  with open(path, encoding="utf-8") as f:
    index = json.load(f)
  if index.get("format") != FORMAT or index.get("version") != VERSION:
    raise UsageError(f"{path}: not a {FORMAT} v{VERSION} index")
  diff = features.settings_diff(index["settings"], settings)
  if diff:
    raise UsageError(f"{output} was written with different settings ({'; '.join(diff)}); use a new --output "
                     f"folder or the settings it was written with")
  return index


def moving_head(params, seed):
  """Random-init teacher params with the output head's kernel drawn from N(0, (gain / sqrt(dim))²). Wan's head is
  zero-initialised (as the reference's), so a random teacher predicts v = 0 and its ODE trajectories are
  constant: first latent = last, and the ODE-init loss of a random student is exactly 0. Only a teacher without
  weights (smoke runs, tests) gets this; model init itself is unchanged."""
  kernel = params["head"]["head"]["kernel"]
  draw = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 0x4EAD), kernel.shape, jnp.float32)
  kernel = (draw * (RANDOM_HEAD_GAIN / np.sqrt(kernel.shape[0]))).astype(kernel.dtype)
  head = dict(params["head"]["head"], kernel=kernel)
  return dict(params, head=dict(params["head"], head=head))


def run(c, output, *, num_steps=48, solver="euler", guidance=6.0, sample_shift=0.0, samples_per_shard=16,
        batch_size=1, num_samples=0, dtype="float16"):
  """Writes (or resumes) the ODE-pair folder `output`; returns a summary dict."""
  from tqdm import tqdm
  if not output:
    raise UsageError("--output is required (the ODE-pair folder; an existing one is resumed)")
  if dtype not in DTYPES:
    raise UsageError(f"--dtype={dtype!r}; valid: {', '.join(DTYPES)}")
  for name, val in (("samples_per_shard", samples_per_shard), ("batch_size", batch_size)):
    if val < 1:
      raise UsageError(f"--{name}={val} must be >= 1")
  settings_dmd = dmd_settings(c.dmd)
  shift = float(sample_shift or c.dmd.shift)
  sigmas, timesteps = teacher_grid(solver, num_steps, shift)
  student = [t / 1000.0 for t in settings_dmd.timesteps] + [0.0]
  keep = keep_indices(student, sigmas)
  slots = np.full(num_steps + 1, -1, np.int32)
  slots[keep] = np.arange(len(keep), dtype=np.int32)

  if c.data.random_contexts <= 0:   # before the teacher is built or the output folder made
    data.check_prompt_encoder(c.data.text_encoder, c.data.tokenizer)
  role = "teacher" if "teacher" in c.models else "generator"
  mcfg = c.models[role]
  mesh = shd.make_mesh(c.mesh)
  rules = shd.override_rules(c.sharding_overrides)
  built = build_dit(mcfg, seed=c.seed, mesh=mesh, rules=rules, role=role)
  cfg = built.cfg
  if c.data.random_contexts > 0:
    prompts = None
    contexts, negative = data.random_contexts(c.seed, c.data.random_contexts, cfg.text_len, cfg.text_dim)
    total = len(contexts)
  else:
    prompts = data.read_prompts(c.data.prompts)
    total = len(prompts)
  n = min(num_samples, total) if num_samples > 0 else total
  latent = tuple(c.data.latent_shape) + (cfg.out_dim,)
  settings = json.loads(json.dumps(dict(
      teacher=mcfg.preset, weights=mcfg.weights, precision=mcfg.precision, solver=solver, num_steps=num_steps,
      shift=shift, guidance=guidance, cfg_form="standard", student_timesteps=list(settings_dmd.timesteps),
      kept_steps=keep, kept_sigmas=[float(sigmas[i]) for i in keep], latent_shape=latent, seed=c.seed,
      num_samples=n, samples_per_shard=samples_per_shard, dtype=dtype, prompts=c.data.prompts,
      random_contexts=c.data.random_contexts)))
  check_writable(output, "--output")
  index = _read_index(output, settings)
  done = {s["file"] for s in index["shards"]}
  num_shards = -(-n // samples_per_shard)
  todo = [k for k in range(num_shards) if f"shard-{k:05d}.safetensors" not in done]
  if not todo:
    logging.info("%s: all %d shards already written", output, num_shards)
    return {"output": output, "samples": n, "shards_written": 0, "shards": num_shards}

  # Loaded once, off the mesh: prompt encoding runs outside `activate`, below.
  encoder = (None if prompts is None else
             data.prompt_encoder(c.data.text_encoder, c.data.tokenizer, text_len=cfg.text_len))
  with shd.activate(mesh, rules):
    params = built.load(mesh, rules)
    if params is None:   # no weights (smoke runs, tests): a random teacher whose trajectories move
      logging.info("random teacher: its zero-initialised output head is drawn at random instead (std %g / sqrt(dim)) "
                   "so that the trajectories are not constant", RANDOM_HEAD_GAIN)
      params = jax.jit(lambda: moving_head(built.random_init(), c.seed), out_shardings=built.shardings)()
    # The teacher only runs forwards: its bf16 matmuls' kernels stored in bf16 (bit-identical, half their bytes).
    params = jax.jit(built.frozen, out_shardings=built.shardings)(params)
    slv = get_solver(solver)
    run_traj = jax.jit(functools.partial(trajectory, built.fn, slv, len(keep)))
    noise_sh = batch_sharding(mesh, rules, (batch_size,) + latent, ("batch", "frames", "height", "width", "channels"))
    key = jax.random.PRNGKey(c.seed)
    draw = jax.jit(lambda i: jax.random.normal(jax.random.fold_in(key, i), latent, jnp.float32))
  out_dtype = DTYPES[dtype]
  remaining = sum(min(n, (k + 1) * samples_per_shard) - k * samples_per_shard for k in todo)
  bar = tqdm(total=n, initial=n - remaining, desc="ode pairs", unit="sample", disable=None)
  for k in todo:
    ids = np.arange(k * samples_per_shard, min(n, (k + 1) * samples_per_shard))
    if prompts is None:
      ctx_all, neg = contexts[ids], negative
    else:
      ctx_all, neg = data.encode_prompts(
          [prompts[i] for i in ids], c.data.negative_prompt, text_encoder=c.data.text_encoder,
          tokenizer=c.data.tokenizer, text_len=cfg.text_len, encoder=encoder,
          cache_dir=c.data.prompt_cache or os.path.join(output, "prompt_cache"))
    with shd.activate(mesh, rules):
      ctx_sh = batch_sharding(mesh, rules, (batch_size,) + ctx_all.shape[1:], ("batch", "text_length", "act_embed"))
      trajs = []
      for s in range(0, len(ids), batch_size):
        sel = np.arange(s, min(s + batch_size, len(ids)))
        pad = np.concatenate([sel, np.full(batch_size - len(sel), sel[-1])])  # one compiled batch size
        noise = jax.device_put(jnp.stack([draw(int(ids[j])) for j in pad]), noise_sh)
        traj = run_traj(params, noise, jax.device_put(ctx_all[pad], ctx_sh), jnp.asarray(neg),
                        jnp.asarray(sigmas), jnp.asarray(timesteps), jnp.asarray(slots), jnp.float32(guidance))
        trajs.append(np.asarray(jax.device_get(traj))[:len(sel)])
        bar.update(len(sel))
    name = f"shard-{k:05d}.safetensors"
    try:
      checkpoint.save_tensors(os.path.join(output, name), {
          "latents": np.concatenate(trajs).astype(out_dtype), "context": ctx_all.astype(out_dtype),
          "prompt_index": ids.astype(np.int64)}, metadata={"format": FORMAT})
      shards = sorted(index["shards"] + [{"file": name, "start": int(ids[0]), "count": len(ids)}],
                      key=lambda r: r["file"])
      features.write_json(os.path.join(output, INDEX), dict(index, shards=shards))   # after the shard
    except OSError as e:
      reason = write_failure(e)
      if reason is None:
        raise
      raise WriteFailedError(f"--output={output}: cannot write {name}: {reason}. Free space and rerun the same "
                             f"command: it keeps the {len(index['shards'])} finished shard(s)") from None
    index["shards"] = shards
  bar.close()
  return {"output": output, "samples": n, "shards_written": len(todo), "shards": num_shards}


def main(argv):
  from absl import flags
  from infer import cli
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  try:
    if f.config is None:
      raise UsageError("--config is required, e.g. --config configs/train/ode_init.py")
    s = run(f.config, f.output, num_steps=f.num_steps, solver=f.solver, guidance=f.guidance,
            sample_shift=f.sample_shift, samples_per_shard=f.samples_per_shard, batch_size=f.batch_size,
            num_samples=f.num_samples, dtype=f.dtype)
  except WriteFailedError as e:   # full disk, ... during the run
    cli.fail(e, exit_code=1)
  except UsageError as e:
    cli.fail(e)
  except KeyboardInterrupt:
    cli.interrupted(f"the shards written so far are kept in {f.output}; run the same command again to resume")
  sys.stdout.write(f"wrote {s['shards_written']} shard(s) of {s['shards']} ({s['samples']} samples) -> "
                   f"{s['output']}\n")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "The ode_init training config (student list, teacher, data).",
                                  lock_config=True)
  flags.DEFINE_string("output", None, "ODE-pair folder (shards + ode_pairs.json); an existing one is resumed.")
  flags.DEFINE_integer("num_steps", 48, "Teacher sampling steps (SF script: 48; CausVid: 50 for its list).")
  flags.DEFINE_enum("solver", "euler", list(SOLVERS), "Teacher solver: euler (reference) or unipc (Wan).")
  flags.DEFINE_float("guidance", 6.0, "Standard CFG scale of the teacher (reference: 6.0).")
  flags.DEFINE_float("sample_shift", 0.0, "Teacher grid shift; 0 = the config's dmd.shift (8 for ode_init).")
  flags.DEFINE_integer("samples_per_shard", 16, "Samples per safetensors shard.")
  flags.DEFINE_integer("batch_size", 1, "Prompts per teacher call (CFG doubles it).")
  flags.DEFINE_integer("num_samples", 0, "Number of prompts to use; 0 = all.")
  flags.DEFINE_string("dtype", "float16", "Stored dtype: float16 (reference), bfloat16 or float32.")
  from infer import cli
  app.run(main, flags_parser=cli.flags_parser(what="config", hint="configs/train/ode_init.py[:arg]"))
