"""Where one DiT block's time goes: each piece of `WanBlock` jitted and timed on its own, at the real width.

  python benchmarks/dit_layer_breakdown.py                    # T2V-1.3B block at 32,760 tokens, bf16
  python benchmarks/dit_layer_breakdown.py --model t2v_14b
  python benchmarks/dit_layer_breakdown.py --small            # CPU smoke run (tiny config, 3x4x6 latent)

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
"""

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402

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


def run(args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from wanjax import precision
  from wanjax.dit import layers, rope
  from wanjax.dit.config import get_config
  from wanjax.dit.model import WanBlock
  from wanjax.ops.attention import attention

  cfg = get_config(args.model)
  if args.small:
    cfg = dataclasses.replace(cfg, dim=64, ffn_dim=128, num_heads=2, text_len=16)
  F, H, W = SHAPES["small" if args.small else "480p"]
  p = cfg.patch_size
  grid = (F // p[0], H // p[1], W // p[2])
  L, S, D, n = grid[0] * grid[1] * grid[2], cfg.text_len, cfg.dim, cfg.num_heads
  policy = precision.get_policy("bf16")
  cd = policy.compute_dtype

  t0 = time.perf_counter()
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanBlock(cfg, policy=policy, rngs=nnx.Rngs(0),
                                                              attn_impl=args.attn)))
  state = jax.jit(lambda: nnx.state(WanBlock(cfg, policy=policy, rngs=nnx.Rngs(0), attn_impl=args.attn)))()
  init_s = time.perf_counter() - t0
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (1, L, D), jnp.float32)
  e0 = jax.random.normal(keys[1], (1, 1, 6, D), jnp.float32) * 0.1
  ctx = jax.random.normal(keys[2], (1, S, D), jnp.float32).astype(cd)
  cos, sin = rope.rope_cos_sin(cfg.head_dim, grid)

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
  parts = sum(r["ms"] for k_, r in rows.items() if k_ != "block")
  # The pieces chained must give the block's output: they are the block, cut at its seams.
  x1 = jax.jit(o_residual)(state, x, a)
  chained = jax.jit(ffn)(state, jax.jit(cross)(state, x1))
  whole = jax.jit(block)(state, x)
  rel = float(jnp.linalg.norm(chained - whole) / jnp.linalg.norm(whole))
  dev = jax.devices()[0]
  return dict(bench="dit_layer_breakdown", model=args.model, small=args.small, device=dev.device_kind,
              tokens=L, text_rows=S, dim=D, heads=n, layers=cfg.num_layers, attn=args.attn, init_s=init_s,
              pieces=rows, pieces_sum_ms=parts, chained_vs_block_rel_err=rel, block_ms=rows["block"]["ms"],
              forward_est_s=rows["block"]["ms"] * cfg.num_layers / 1e3,
              rest_est_s=(rows["block"]["ms"] - rows["self_attn"]["ms"]) * cfg.num_layers / 1e3)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="t2v_1_3b")
  p.add_argument("--attn", default="auto", help="attention implementation (auto | xla | cudnn | splash)")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--small", action="store_true", help="tiny config on a 3x4x6 latent (CPU smoke run)")
  args = p.parse_args()
  cli.apply_small(p, args, {}, preset="model", runs="a dim-64, 2-head block on a 3x4x6 latent")
  if args.iters < 1:
    p.error(f"--iters must be >= 1, got {args.iters}")
  r = run(args)
  print(f"{r['model']} block on {r['device']}: {r['tokens']} tokens, {r['text_rows']} text rows, dim {r['dim']}, "
        f"{r['heads']} heads, attention {r['attn']}")
  for name, row in r["pieces"].items():
    print(f"  {name:>10}: {row['ms']:9.3f} ms  {row['gflop']:9.1f} GFLOP  {row['tflops']:7.1f} TFLOP/s"
          f"  finite {row['finite']}")
  print(f"  pieces sum {r['pieces_sum_ms']:.3f} ms, whole block {r['block_ms']:.3f} ms; x {r['layers']} layers: "
        f"{r['forward_est_s']:.3f} s, of which outside self-attention {r['rest_est_s']:.3f} s")
  print(f"  pieces chained vs the block: relative error {r['chained_vs_block_rel_err']:.2e}")
  print(json.dumps(r))


if __name__ == "__main__":
  cli.run(main)
