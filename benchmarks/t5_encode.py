"""umT5-XXL text-encoder benchmark: encode a batch of 1 and of 2 prompts of 512 tokens with random bf16 weights.

  python benchmarks/t5_encode.py                       # umt5_xxl (5.68 B params, 24 layers), bf16, 512 tokens
  python benchmarks/t5_encode.py --batches 1,2,4 --iters 20 --mesh fsdp=-1
  python benchmarks/t5_encode.py --small               # CPU smoke test (tiny config)

The encoder is built abstractly (`nnx.eval_shape`) and its random weights are created by a jitted init whose
outputs carry the parameters' shardings, so every weight is born on the device(s) and no host copy of the 11 GB
model exists. The encoder runs as `wanjax.text.umt5.UMT5Encoder.__call__` (what `infer.forward --component t5`
and `TextEncoder.encode` run): full padded length with the key mask, bf16 weights and activations.

Prints per batch size: compile time, median seconds per encode over `--iters` timed calls after one warm-up
(`block_until_ready`), tokens per second, peak device memory so far (includes the weights; 0 where the backend
reports none, e.g. CPU); then one JSON line to paste into reports.
"""

import argparse
import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402


def build_encoder(cfg, policy, mesh):
  """(graphdef, state) of a randomly initialised UMT5Encoder, each parameter created in its shard."""
  import jax
  from flax import nnx
  from wanjax import sharding as shd
  from wanjax.text.umt5 import UMT5Encoder

  make = lambda: UMT5Encoder(cfg, policy=policy, rngs=nnx.Rngs(0))  # noqa: E731
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
  shardings = shd.state_shardings(abstract_state, mesh)

  @functools.partial(jax.jit, out_shardings=shardings)
  def init():
    return nnx.state(make())

  return graphdef, init()


def measure(encode, state, ids, mask, iters):
  """compile seconds, median seconds per encode, finite output?"""
  import jax
  import numpy as np
  t0 = time.perf_counter()
  compiled = encode.lower(state, ids, mask).compile()
  compile_s = time.perf_counter() - t0
  out = jax.block_until_ready(compiled(state, ids, mask))   # warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(state, ids, mask))
    times.append(time.perf_counter() - t0)
  finite = bool(jax.device_get(jax.numpy.isfinite(out).all()))
  return compile_s, float(np.median(times)), finite


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="umt5_xxl", help="umT5 preset (wanjax.text.umt5.PRESETS)")
  p.add_argument("--batches", default="1,2", help="comma-separated batch sizes")
  p.add_argument("--seq-len", type=int, default=512, help="tokens per prompt (the reference pads to 512)")
  p.add_argument("--real-tokens", type=int, default=0, help="unmasked tokens per prompt (0 = all)")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--policy", default="bf16", choices=["bf16", "float32"])
  p.add_argument("--mesh", default="fsdp=-1", help="mesh over all devices, e.g. fsdp=-1 or tensor=-1")
  p.add_argument("--small", action="store_true", help="tiny config on CPU (smoke test)")
  args = p.parse_args()
  cli.apply_small(p, args, dict(config="tiny", iters=3), preset="config")
  if args.small:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

  import jax
  import numpy as np
  from flax import nnx
  from jax.sharding import NamedSharding
  from wanjax import sharding as shd
  from wanjax.text.umt5 import count_params, get_config

  cfg = get_config(args.config)
  batches = cli.int_list(p, "--batches", args.batches)
  if args.seq_len < 1 or args.iters < 1:
    p.error(f"--seq-len={args.seq_len} and --iters={args.iters} must be >= 1")
  real = args.real_tokens or args.seq_len
  if not 1 <= real <= args.seq_len:
    p.error(f"--real-tokens={args.real_tokens} must be in 1..--seq-len={args.seq_len}")
  mesh = shd.make_mesh(args.mesh, flag="--mesh")
  dev = jax.devices()[0]

  t0 = time.perf_counter()
  graphdef, state = build_encoder(cfg, args.policy, mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  n_params = count_params(cfg)
  weight_gb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**30
  print(f"umT5 {args.config}: {n_params:,} params, {weight_gb:.2f} GiB {args.policy} weights, "
        f"initialised on {dev.device_kind} x{mesh.size} ({dict(mesh.shape)}) in {init_s:.1f} s")

  def encode(state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)

  rng = np.random.default_rng(0)
  results = []
  with shd.activate(mesh):
    encode_jit = jax.jit(encode)
    for b in batches:
      ids = rng.integers(0, cfg.vocab, (b, args.seq_len)).astype(np.int32)
      mask = np.broadcast_to((np.arange(args.seq_len) < real).astype(np.int32), (b, args.seq_len))
      batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), ids.shape, mesh))
      ids, mask = jax.device_put((ids, np.ascontiguousarray(mask)), batch_sharding)
      compile_s, sec, finite = measure(encode_jit, state, ids, mask, args.iters)
      stats = dev.memory_stats() or {}
      r = dict(batch=b, seq_len=args.seq_len, real_tokens=real, compile_s=round(compile_s, 3), sec=sec,
               tokens_per_s=b * args.seq_len / sec, peak_gb=stats.get("peak_bytes_in_use", 0) / 2**30,
               finite=finite)
      results.append(r)
      print(f"batch {b} x {args.seq_len} tokens: {sec * 1e3:.2f} ms/encode (median of {args.iters}), compile "
            f"{compile_s:.1f} s, {r['tokens_per_s']:.0f} tokens/s, peak {r['peak_gb']:.2f} GiB, finite {finite}")
  summary = dict(bench="t5_encode", config=args.config, params=n_params, policy=args.policy, device=dev.device_kind,
                 platform=dev.platform, num_devices=mesh.size, mesh=dict(mesh.shape), init_s=round(init_s, 3),
                 weight_gb=weight_gb, iters=args.iters, results=results)
  print(json.dumps(summary))


if __name__ == "__main__":
  cli.run(main)
