"""Where one DiT block's time goes: each piece of `WanBlock` jitted and timed on its own, at the real width.

  python benchmarks/dit_layer_breakdown.py                    # T2V-1.3B block at 32,760 tokens, bf16
  python benchmarks/dit_layer_breakdown.py --model t2v_14b
  python benchmarks/dit_layer_breakdown.py --small            # CPU smoke run (tiny config, 3x4x6 latent)
  python benchmarks/dit_layer_breakdown.py --profile 5 --profile-dir $OUT/trace   # + per-kernel table

`benchmarks/dit_forward.py` splits the forward into self-attention and "the rest"; this script splits the rest.
Pieces, in block order (each takes and returns what the block passes between them):

  norm1_mod     LayerNorm (float32 statistics) + shift/scale modulation of the float32 residual stream
  qkv           q/k/v projections, RMSNorm of q and k over D, 3-D RoPE (float32), as `SelfAttention.qkv`
  self_attn     the attention kernel alone (`--attn`, "auto" = cuDNN on a GPU)
  o_residual    output projection + gated float32 residual add
  cross         norm3 + q (and the text rows' k/v) projections + RMSNorm + attention over 512 text rows + o
                projection + residual add
  ffn           LayerNorm + modulation + FFN (GELU tanh) + gated residual add

For each piece: milliseconds (median of `--iters`), its matmul FLOPs and achieved TFLOP/s. Then the sum of the
pieces against the whole block in one program (the difference is what fusion across piece boundaries saves or
costs), and the block time times the layer count. Pieces with few FLOPs and many milliseconds are memory-bound
elementwise work: the place to look for the rest of the forward's time.

`--profile N` then runs the compiled whole block N more times (after one warm-up) under `jax.profiler.trace` and
reads the trace back with `jax.profiler.ProfileData`: the device's kernel events (GPU stream lines), named by their
HLO instruction (`hlo_op` stat: fusion, cuBLAS gemm, cuDNN attention custom call) where the trace gives one, else
by the kernel, are summed per name and printed as a table (calls and ms per block, % of the block's summed kernel
time, the instruction's shape and opcode or custom-call target from the optimized HLO, the longest kernel's name),
top `--profile-top` rows; the JSON line gains "kernels" and "kernel_ms_per_block". On a CPU there is no device
plane: the XLA CPU runtime's per-thunk events on the host plane stand in, or one line says there were none.
`--profile-dir DIR` keeps the trace (DIR/plugins/profile/<time>/<host>.xplane.pb, for TensorBoard or xprof) and
the block's optimized HLO (DIR/block_hlo.txt) instead of deleting them.
"""

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402

NO_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="
SHAPES = {"480p": (21, 60, 104), "small": (3, 4, 6)}   # latent F, H, W before the 2x2 patchify


def piece_flops(cfg, L, S):
  """Matmul FLOPs (2 per multiply-add) of each piece for L video tokens and S text rows."""
  D, M = cfg.dim, cfg.ffn_dim
  return {
      "norm1_mod": 0,
      "qkv": 2 * L * D * D * 3,
      "self_attn": 2 * 2 * L * L * D,
      "o_residual": 2 * L * D * D,
      # q and o projections, k and v of the S text rows, QK^T and PV over them
      "cross": 2 * L * D * D * 2 + 2 * S * D * D * 2 + 2 * 2 * L * S * D,
      "ffn": 2 * L * D * M * 2,
  }


# Lines that profiler post-processing derives from the kernel lines of a device plane (their events repeat the
# kernels', or span whole modules): counting them would count kernels twice.
DERIVED_LINES = {"XLA Modules", "XLA Ops", "Async XLA Ops", "XLA TraceMe", "Steps", "Framework Ops",
                 "Framework Name Scope", "TensorFlow Ops", "TensorFlow Name Scope", "Source code", "Launch Stats"}


def trace_events(profile, host=True):
  """(name, duration_ns, kernel) of every kernel in a `jax.profiler.ProfileData`, and where they came from.

  Device planes ("/device:GPU:0", ...) first: events of their "Stream #..." lines (all lines but the derived ones
  if no line is named so), named by the `hlo_op` stat when the event has one. Without device events and with
  `host` (a CPU run: a GPU's host events would be launch times), the host plane's events that carry an `hlo_op`
  stat (XLA CPU thunks). Returns (events, "device" | "host" | None)."""
  events = [(_op_name(ev), float(ev.duration_ns), ev.name) for ev in _device_kernel_events(profile)]
  if events:
    return events, "device"
  if host:
    events = [(str(st["hlo_op"]), float(ev.duration_ns), ev.name) for ev, st in _host_hlo_events(profile)]
  return events, ("host" if events else None)


def _host_hlo_events(profile):
  """(event, stats) of the host planes' events that carry an `hlo_op` stat (XLA CPU thunks)."""
  for plane in profile.planes:
    if plane.name.startswith("/host:"):
      for line in plane.lines:
        for ev in line.events:
          st = dict(ev.stats)
          if st.get("hlo_op"):
            yield ev, st


def _device_kernel_events(profile):
  """The kernel events of a profile's device planes: their "Stream #..." lines, or every line but the derived ones
  where no line is named so."""
  for plane in profile.planes:
    if not plane.name.startswith("/device:") or plane.name.startswith("/device:CPU"):
      continue
    lines = list(plane.lines)
    streams = [ln for ln in lines if ln.name.startswith("Stream")]
    for line in streams or [ln for ln in lines if ln.name not in DERIVED_LINES]:
      yield from line.events


def _op_name(ev):
  """An event's HLO instruction (`hlo_op` stat), else the kernel's name."""
  return str(dict(ev.stats).get("hlo_op") or ev.name)


def device_timeline(profile):
  """(hlo op or kernel name, start_ns, end_ns) of the device kernels of a `jax.profiler.ProfileData` (the events
  `trace_events` reads), sorted by start."""
  out = [(_op_name(ev), float(ev.start_ns), float(ev.end_ns)) for ev in _device_kernel_events(profile)]
  return sorted(out, key=lambda e: (e[1], e[2]))


def idle_gaps(timeline, calls, top=8, min_gap_ns=1000.0):
  """Where the device waits between kernels: busy time (the union of kernel intervals), the span from the first
  kernel's start to the last one's end, both per call, and the idle gaps of at least `min_gap_ns` summed by the
  pair of kernels around them (the one before -> the one after), longest first, per call, top `top`.
  The gaps between calls (host dispatch, the wait for the result) are in the span too."""
  if not timeline:
    return dict(busy_ms=0.0, span_ms=0.0, idle_ms=0.0, gaps=[])
  busy, gaps = 0.0, {}
  cur_start, cur_end, prev = timeline[0][1], timeline[0][2], timeline[0][0]
  for name, start, end in timeline[1:]:
    if start > cur_end:
      busy += cur_end - cur_start
      if start - cur_end >= min_gap_ns:
        key = f"{prev} -> {name}"
        gaps[key] = gaps.get(key, 0.0) + (start - cur_end)
      cur_start, cur_end = start, end
    else:
      cur_end = max(cur_end, end)
    prev = name if end >= cur_end else prev
  busy += cur_end - cur_start
  span = timeline[-1][2] - timeline[0][1]
  rows = sorted(gaps.items(), key=lambda kv: -kv[1])[:top]
  return dict(busy_ms=busy / calls / 1e6, span_ms=span / calls / 1e6, idle_ms=(span - busy) / calls / 1e6,
              gaps=[dict(between=k, ms=v / calls / 1e6) for k, v in rows])


def aggregate_kernels(events, calls):
  """Sums (name, duration_ns[, kernel]) events by name over `calls` runs of the program.

  Returns (rows, total ms per call): rows sorted by time, longest first, each {name, count, ms, pct, kernel} with
  count and ms per call, pct of the summed time of all events, kernel the name of the kernel that took most of
  the row's time (the name itself for 2-tuples)."""
  ns, count, by_kernel = {}, {}, {}
  for name, dur, *kernel in events:
    ns[name] = ns.get(name, 0.0) + dur
    count[name] = count.get(name, 0) + 1
    k = by_kernel.setdefault(name, {})
    k[kernel[0] if kernel else name] = k.get(kernel[0] if kernel else name, 0.0) + dur
  total = sum(ns.values())
  rows = [dict(name=name, count=count[name] / calls, ms=t / calls / 1e6, pct=100 * t / total if total else 0.0,
               kernel=max(by_kernel[name].items(), key=lambda kv: (kv[1], kv[0]))[0])
          for name, t in ns.items()]
  rows.sort(key=lambda r: (-r["ms"], r["name"]))
  return rows, total / calls / 1e6


def kernels_by_op(rows):
  """The kernel rows of `profile_block` summed by what they are (the `op` column: a custom-call target such as a
  cuDNN convolution, "fusion kLoop", "copy", ...; "?" where the HLO did not name it): [{op, ms, pct, count}],
  longest first."""
  ms, count = {}, {}
  for r in rows:
    op = r.get("op") or "?"
    ms[op] = ms.get(op, 0.0) + r["ms"]
    count[op] = count.get(op, 0) + r["count"]
  total = sum(ms.values())
  out = [dict(op=op, ms=t, pct=100 * t / total if total else 0.0, count=count[op]) for op, t in ms.items()]
  return sorted(out, key=lambda r: (-r["ms"], r["op"]))


_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+) = (?P<shape>.+?) (?P<opcode>[a-z][\w-]*)\(")


def hlo_instructions(hlo_text):
  """{instruction name: (shape without layouts, what it is, metadata op_name)} of HLO text; what it is: the
  custom-call target, "fusion <kind>" (a custom fusion's backend kind, e.g. __triton_gemm, else kLoop/kInput/...),
  or the opcode."""
  out = {}
  for line in hlo_text.splitlines():
    m = _HLO_INSTR.match(line)
    if not m:
      continue
    op = m["opcode"]
    target = re.search(r'custom_call_target="([^"]*)"', line)
    if target:
      op = target[1]
    elif op == "fusion":
      kind = re.search(r'"kind":"(__[^"]+)"', line) or re.search(r"\bkind=(k\w+)", line)
      op = f"fusion {kind[1]}" if kind else op
    op_name = re.search(r'op_name="([^"]*)"', line)
    out[m["name"]] = (re.sub(r"\{[^}]*\}", "", m["shape"]), op, op_name[1] if op_name else "")
  return out


def traced_profile(run, calls, keep_dir=None):
  """(`jax.profiler.ProfileData` or None, trace path or None) of `calls` runs of `run()` (which waits for its own
  results) after one untraced warm-up run, so that nothing of the first call's one-time work is in the trace. The
  trace goes to a temporary directory (removed once loaded) or is kept in `keep_dir`."""
  import jax
  from jax.profiler import ProfileData

  run()
  tmp = None if keep_dir else tempfile.mkdtemp(prefix="wanjax_profile_")
  log_dir = keep_dir or tmp
  try:
    before = set(_xplanes(log_dir))
    with jax.profiler.trace(log_dir):
      for _ in range(calls):
        run()
    new = sorted(set(_xplanes(log_dir)) - before, key=os.path.getmtime)
    if not new:
      return None, None
    return ProfileData.from_file(new[-1]), (new[-1] if keep_dir else None)
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)


def profile_block(compiled, inputs, calls, top, keep_dir=None, all_rows=False):
  """Kernel table of `calls` runs of `compiled(*inputs)` (see the module docstring); the trace goes to a
  temporary directory, or is kept in `keep_dir`. `all_rows`: every row also under "all_kernels" (the table keeps
  the `top` longest), for `kernels_by_op`."""
  import jax

  profile, trace_path = traced_profile(lambda: jax.block_until_ready(compiled(*inputs)), calls, keep_dir)
  if profile is None:
    return dict(kernels=[], kernel_ms_per_block=0.0, kernel_names=0, kernel_source=None, profile_calls=calls)
  events, source = trace_events(profile, host=jax.devices()[0].platform == "cpu")
  timeline = idle_gaps(device_timeline(profile), calls)
  hlo = compiled.as_text()
  if keep_dir:
    from wanjax.fileio import atomic_open
    with atomic_open(os.path.join(keep_dir, "block_hlo.txt")) as f:
      f.write(hlo)
  rows, total = aggregate_kernels(events, calls)
  instr = hlo_instructions(hlo)
  for r in rows:
    r["shape"], r["op"], r["op_name"] = instr.get(r["name"], ("", "", ""))
  out = dict(kernels=rows[:top], kernel_ms_per_block=total, kernel_names=len(rows), kernel_source=source,
             profile_calls=calls, device_timeline=timeline, **({"all_kernels": rows} if all_rows else {}))
  if keep_dir:
    out["profile_trace"] = trace_path
  return out


# What a kernel is, from its name and its HLO instruction (first match wins; cuDNN, cuBLAS, XLA's fusion names).
KINDS = (
    ("attention", r"fmha|flash|sdpa|attention"),
    ("convolution", r"conv|fprop_implicit|dgrad|wgrad"),
    ("matmul", r"gemm|xmma|nvjet|cutlass|cublas|matmul|\bdot\b|dot\."),
    ("copy / slice / update", r"copy|memcpy|memset|dynamic[-_]update[-_]slice|dynamic[-_]slice|concatenate|\bslice"),
    ("fusion (elementwise, reductions)", r"fusion|reduce|loop_|input_"),
)


def kernel_kind(kernel, op):
  """The `KINDS` row of a kernel ("other" if none matches)."""
  text = f"{kernel} {op}".lower()
  return next((kind for kind, rx in KINDS if re.search(rx, text)), "other")


def _module_events(profile, host):
  """(hlo_module, hlo_op, kernel, duration_ns) of a profile's kernels (device lines; host thunks on a CPU)."""
  out = []
  for ev in _device_kernel_events(profile):
    st = dict(ev.stats)
    out.append((str(st.get("hlo_module") or "?"), _op_name(ev), ev.name, float(ev.duration_ns)))
  if out or not host:
    return out
  return [(str(st.get("hlo_module") or "?"), str(st["hlo_op"]), ev.name, float(ev.duration_ns))
          for ev, st in _host_hlo_events(profile)]


def profile_calls(run, calls, top=8):
  """Kernel time of `calls` runs of `run()` (which waits for its own results; one warm-up run first, untraced),
  for work made of several programs (a sampler's DiT calls, updates and decodes): per program (`hlo_module`), ms
  per run, its share, its kernels by `KINDS` and its longest kernels; plus the device's busy time and span per run.
  Kernel names, not HLO instruction names, are what is comparable across programs."""
  import jax

  profile, _ = traced_profile(run, calls)
  if profile is None:
    return dict(calls=calls, modules=[], kernel_ms=0.0, busy_ms=0.0, span_ms=0.0)
  events = _module_events(profile, host=jax.devices()[0].platform == "cpu")
  timeline = idle_gaps(device_timeline(profile), calls)
  total = sum(e[3] for e in events)
  modules = {}
  for module, op, kernel, dur in events:
    m = modules.setdefault(module, dict(ns=0.0, kinds={}, kernels={}))
    m["ns"] += dur
    kind = kernel_kind(kernel, op)
    m["kinds"][kind] = m["kinds"].get(kind, 0.0) + dur
    k = m["kernels"].setdefault(kernel, [0.0, 0])
    k[0] += dur
    k[1] += 1
  rows = []
  for module, m in sorted(modules.items(), key=lambda kv: -kv[1]["ns"]):
    rows.append(dict(
        module=module, ms=m["ns"] / calls / 1e6, pct=100 * m["ns"] / total if total else 0.0,
        kinds=[dict(kind=k, ms=v / calls / 1e6, pct=100 * v / m["ns"] if m["ns"] else 0.0)
               for k, v in sorted(m["kinds"].items(), key=lambda kv: -kv[1])],
        top=[dict(kernel=k, ms=v[0] / calls / 1e6, count=v[1] / calls)
             for k, v in sorted(m["kernels"].items(), key=lambda kv: -kv[1][0])[:top]]))
  return dict(calls=calls, modules=rows, kernel_ms=total / calls / 1e6, busy_ms=timeline["busy_ms"],
              span_ms=timeline["span_ms"])


def print_profile_calls(r, what="run"):
  """The `profile_calls` tables."""
  print(f"  kernels per {what} ({r['calls']} traced): {r['kernel_ms']:.1f} ms of kernels; device busy "
        f"{r['busy_ms']:.1f} ms of a {r['span_ms']:.1f} ms span")
  for m in r["modules"]:
    kinds = ", ".join(f"{k['kind']} {k['ms']:.1f}" for k in m["kinds"])
    print(f"  {m['ms']:10.2f} ms {m['pct']:5.1f} %  {m['module'][:48]:<48} {kinds}")
    for k in m["top"][:4]:
      print(f"  {'':>10}    {k['ms']:8.2f} ms x{k['count']:<6g} {k['kernel'][:90]}")


def _xplanes(log_dir):
  found = []
  for root, _, files in os.walk(log_dir):
    found += [os.path.join(root, f) for f in files if f.endswith(".xplane.pb")]
  return found


def add_block_flags(p, attn_help="attention implementation"):
  """The flags every one-block benchmark takes: --model, --attn (one of `wanjax.ops.attention.IMPLS`), --iters,
  --small."""
  from wanjax.ops.attention import IMPLS
  p.add_argument("--model", default="t2v_1_3b")
  p.add_argument("--attn", default="auto", choices=IMPLS, help=f"{attn_help} ({' | '.join(IMPLS)})")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--small", action="store_true", help="tiny config on a 3x4x6 latent (CPU smoke run)")


def check_block_flags(p, args):
  """--small's settings (it replaces --model) and the --iters bound, as parser errors."""
  cli.apply_small(p, args, {}, preset="model", runs="a dim-64, 2-head block on a 3x4x6 latent")
  if args.iters < 1:
    p.error(f"--iters must be >= 1, got {args.iters}")


def block_inputs(cfg, grid, compute_dtype):
  """The inputs of one benchmarked block: float32 residual stream x `[1, L, D]`, time modulation e0
  `[1, 1, 6, D]`, embedded text `[1, S, D]` in the compute dtype, and the RoPE tables of the grid."""
  import jax
  import jax.numpy as jnp
  from wanjax.dit import rope
  L, S, D = grid[0] * grid[1] * grid[2], cfg.text_len, cfg.dim
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (1, L, D), jnp.float32)
  e0 = jax.random.normal(keys[1], (1, 1, 6, D), jnp.float32) * 0.1
  ctx = jax.random.normal(keys[2], (1, S, D), jnp.float32).astype(compute_dtype)
  cos, sin = rope.rope_cos_sin(cfg.head_dim, grid)
  return x, e0, ctx, cos, sin


def disable_command_buffers():
  """Turns XLA's CUDA graphs off for this process (before jax starts): a profile then shows every kernel."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + NO_COMMAND_BUFFERS).strip()


def block_setup(model, small):
  """The DiT config of `model` (the tiny width with `small`) and the patch grid of the benchmarked latent."""
  from wanjax.dit.config import get_config
  cfg = get_config(model)
  if small:
    cfg = dataclasses.replace(cfg, dim=64, ffn_dim=128, num_heads=2, text_len=16)
  F, H, W = SHAPES["small" if small else "480p"]
  p = cfg.patch_size
  return cfg, (F // p[0], H // p[1], W // p[2])


def run(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from wanjax import precision
  from wanjax.dit import layers
  from wanjax.dit.model import WanBlock
  from wanjax.ops.attention import attention

  cfg, grid = block_setup(args.model, args.small)
  L, S, D, n = grid[0] * grid[1] * grid[2], cfg.text_len, cfg.dim, cfg.num_heads
  policy = precision.get_policy("bf16")
  cd = policy.compute_dtype

  t0 = time.perf_counter()
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanBlock(cfg, policy=policy, rngs=nnx.Rngs(0),
                                                              attn_impl=args.attn)))
  state = jax.jit(lambda: nnx.state(WanBlock(cfg, policy=policy, rngs=nnx.Rngs(0), attn_impl=args.attn)))()
  if not getattr(args, "f32_kernels", False):   # as inference runs it (`wanjax.nn.cast_kernels`): no weight casts
    from wanjax.nn import cast_kernels
    block_module = nnx.merge(graphdef, state)
    cast_kernels(block_module)
    state = nnx.state(block_module)
    del block_module
  init_s = time.perf_counter() - t0
  x, e0, ctx, cos, sin = block_inputs(cfg, grid, cd)

  def mod(b, i):
    return (b.modulation[...].astype(jnp.float32)[None] + e0)[:, :, i]

  def norm1_mod(st, x):
    b = nnx.merge(graphdef, st)
    return layers.modulate(layers.norm_no_affine(x, b.eps), mod(b, 0), mod(b, 1))

  def qkv(st, h):
    return nnx.merge(graphdef, st).self_attn.qkv(h, cos, sin)

  def self_attn(q, k, v):
    return attention(q.astype(cd), k.astype(cd), v.astype(cd), impl=args.attn)

  def o_residual(st, x, a):
    b = nnx.merge(graphdef, st)
    return layers.gated_residual(x, b.self_attn.o(a.reshape(a.shape[:2] + (-1,))), mod(b, 2))

  def cross(st, x):
    b = nnx.merge(graphdef, st)
    return x + b.cross_attn(b.norm3(x), ctx).astype(jnp.float32)

  def ffn(st, x):
    b = nnx.merge(graphdef, st)
    h = layers.modulate(layers.norm_no_affine(x, b.eps), mod(b, 3), mod(b, 4))
    return layers.gated_residual(x, b.ffn(h), mod(b, 5))

  def block(st, x):
    return nnx.merge(graphdef, st)(x, e0, ctx, None, cos, sin)

  # Inputs of each piece are the outputs of the one before, computed once.
  h = jax.jit(norm1_mod)(state, x)
  q, k, v = jax.jit(qkv)(state, h)
  a = jax.jit(self_attn)(q, k, v)
  calls = {
      "norm1_mod": (norm1_mod, (state, x)),
      "qkv": (qkv, (state, h)),
      "self_attn": (self_attn, (q, k, v)),
      "o_residual": (o_residual, (state, x, a)),
      "cross": (cross, (state, x)),
      "ffn": (ffn, (state, x)),
      "block": (block, (state, x)),
  }
  flops = piece_flops(cfg, L, S)
  flops["block"] = sum(flops.values())
  rows = {}
  for name, (fn, inputs) in calls.items():
    compiled = jax.jit(fn).lower(*inputs).compile()
    ms = median_s(lambda: jax.block_until_ready(compiled(*inputs)), args.iters) * 1e3
    out = jax.tree.leaves(compiled(*inputs))
    finite = all(bool(np.isfinite(np.asarray(o, np.float32)).all()) for o in out)
    rows[name] = dict(ms=ms, gflop=flops[name] / 1e9, tflops=flops[name] / (ms / 1e3) / 1e12, finite=finite)
    if name == "block":
      block_compiled = compiled
  parts = sum(r["ms"] for k_, r in rows.items() if k_ != "block")
  # The pieces chained must give the block's output: they are the block, cut at its seams.
  x1 = jax.jit(o_residual)(state, x, a)
  chained = jax.jit(ffn)(state, jax.jit(cross)(state, x1))
  whole = jax.jit(block)(state, x)
  rel = float(jnp.linalg.norm(chained - whole) / jnp.linalg.norm(whole))
  dev = jax.devices()[0]
  result = dict(bench="dit_layer_breakdown", model=args.model, small=args.small, device=dev.device_kind,
                tokens=L, text_rows=S, dim=D, heads=n, layers=cfg.num_layers, attn=args.attn, init_s=init_s,
                pieces=rows, pieces_sum_ms=parts, chained_vs_block_rel_err=rel, block_ms=rows["block"]["ms"],
                forward_est_s=rows["block"]["ms"] * cfg.num_layers / 1e3,
                rest_est_s=(rows["block"]["ms"] - rows["self_attn"]["ms"]) * cfg.num_layers / 1e3,
                command_buffers=NO_COMMAND_BUFFERS not in os.environ.get("XLA_FLAGS", ""))
  if args.profile:
    result.update(profile_block(block_compiled, calls["block"][1], args.profile, args.profile_top,
                                args.profile_dir))
  return result


def print_kernels(r, what="block"):
  """The --profile table: one row per kernel name, longest first, then the rest in one line. `what`: the
  program traced (block, forward, decode)."""
  rows, total = r["kernels"], r["kernel_ms_per_block"]
  if not rows:
    why = ", no host events with an hlo_op stat" if r["device"] == "cpu" else "; is libcupti loadable?"
    print(f"  profile: no per-kernel events in the trace of {r['profile_calls']} {what} calls on {r['device']} "
          f"(no device kernel events{why})")
    return
  print(f"  kernels of the whole {what} ({r['kernel_source']} trace, {r['profile_calls']} calls): "
        f"{total:.3f} ms per {what} in {r['kernel_names']} names, wall {r['block_ms']:.3f} ms")
  print(f"  {'ms':>9} {'%':>5} {'cum%':>5} {'calls':>5}  {'hlo op (or kernel)':<32} {'shape':<32} "
        f"what (jax op); kernel")
  cum = 0.0
  for row in rows:
    cum += row["pct"]
    what = row["op"] + (f" ({row['op_name'].rsplit('/', 1)[-1]})" if row["op_name"] else "")
    kernel = "" if row["kernel"] == row["name"] else f"; {row['kernel'][:70]}"
    print(f"  {row['ms']:9.3f} {row['pct']:5.1f} {cum:5.1f} {row['count']:5g}  {row['name'][:32]:<32} "
          f"{row['shape'][:32]:<32} {what}{kernel}")
  rest = total - sum(row["ms"] for row in rows)
  if r["kernel_names"] > len(rows):
    print(f"  {rest:9.3f} {100 * rest / total if total else 0.0:5.1f} {100.0:5.1f}        "
          f"{r['kernel_names'] - len(rows)} more names")
  tl = r.get("device_timeline") or {}
  if tl.get("span_ms"):
    print(f"  device timeline per {what} call: busy {tl['busy_ms']:.3f} ms of a {tl['span_ms']:.3f} ms span "
          f"(idle {tl['idle_ms']:.3f} ms, gaps between calls included); longest gaps, by the kernels around them:")
    for g in tl["gaps"]:
      print(f"  {g['ms']:9.3f} ms  {g['between'][:150]}")
  if "profile_trace" in r:
    print(f"  trace kept: {r['profile_trace']} ({os.path.getsize(r['profile_trace']) / 2**20:.1f} MiB)")


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_block_flags(p)
  p.add_argument("--f32-kernels", action="store_true",
                 help="keep the bf16 matmuls' kernels in float32, cast in every call (before session 14; inference "
                      "stores them in bf16: `wanjax.nn.cast_kernels`)")
  p.add_argument("--profile", type=int, default=0, metavar="N",
                 help="then trace N calls of the whole block and print its kernels, longest first (0 = off)")
  p.add_argument("--profile-top", type=int, default=25, metavar="K", help="rows of the kernel table (default 25)")
  p.add_argument("--profile-dir", metavar="DIR",
                 help="keep the trace (plugins/profile/<time>/<host>.xplane.pb) and block_hlo.txt in DIR instead "
                      "of a temporary directory; for a device-tool run put DIR under $OUT (the tool brings back at "
                      "most 8 files of 16 MiB each)")
  args = p.parse_args()
  check_block_flags(p, args)
  if args.profile < 0:
    p.error(f"--profile must be >= 0 (0 = off), got {args.profile}")
  if args.profile_top < 1:
    p.error(f"--profile-top must be >= 1, got {args.profile_top}")
  if args.profile:
    # XLA on a GPU replays a program's kernels as one CUDA graph ("command buffer"), which the trace shows as one
    # event: no per-kernel table. Off for this process (before jax starts), so the timings of a --profile run
    # include the kernel launches a CUDA graph would hide (the JSON line says so: "command_buffers": false).
    disable_command_buffers()
  if args.profile_dir is not None:
    if not args.profile:
      p.error(f"--profile-dir {args.profile_dir!r} needs --profile N >= 1")
    if os.path.exists(args.profile_dir) and not os.path.isdir(args.profile_dir):
      p.error(f"--profile-dir {args.profile_dir!r} exists and is not a directory")
    try:
      os.makedirs(args.profile_dir, exist_ok=True)
    except OSError as e:
      p.error(f"--profile-dir {args.profile_dir!r} cannot be created: {e.strerror}")
  r = run(args)
  r["f32_kernels"] = args.f32_kernels
  print(f"{r['model']} block on {r['device']}: {r['tokens']} tokens, {r['text_rows']} text rows, dim {r['dim']}, "
        f"{r['heads']} heads, attention {r['attn']}")
  for name, row in r["pieces"].items():
    print(f"  {name:>10}: {row['ms']:9.3f} ms  {row['gflop']:9.1f} GFLOP  {row['tflops']:7.1f} TFLOP/s"
          f"  finite {row['finite']}")
  print(f"  pieces sum {r['pieces_sum_ms']:.3f} ms, whole block {r['block_ms']:.3f} ms; x {r['layers']} layers: "
        f"{r['forward_est_s']:.3f} s, of which outside self-attention {r['rest_est_s']:.3f} s")
  print(f"  pieces chained vs the block: relative error {r['chained_vs_block_rel_err']:.2e}")
  if args.profile:
    print_kernels(r)
  print(json.dumps(r))


if __name__ == "__main__":
  cli.run(main)
