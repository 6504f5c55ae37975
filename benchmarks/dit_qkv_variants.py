"""Ways to compute one DiT block's self-attention q/k/v, timed side by side at the real width.

  python benchmarks/dit_qkv_variants.py                    # T2V-1.3B block at 32,760 tokens, bf16
  python benchmarks/dit_qkv_variants.py --model t2v_14b
  python benchmarks/dit_qkv_variants.py --small            # CPU smoke run (tiny config, 3x4x6 latent)

`benchmarks/dit_layer_breakdown.py` finds the "qkv" piece (three D x D projections, RMSNorm of q and k over D,
3-D RoPE in float32) well below the FFN's matmul rate. Each variant here maps the norm1 + modulation output h
(bf16; the block passes it in float32) to the q, k, v that the attention kernel takes (compute dtype, `[B, L, N, K]`):

  current        `SelfAttention.qkv`, then each cast to the compute dtype (what `SelfAttention.attend` feeds
                 the kernel): RoPE on interleaved channel pairs, a trailing axis of size 2, float32 q/k
  fused          one matmul over the concatenated q|k|v kernels (`wanjax.ops.fused.fused_dense`), then the
                 same RMSNorm and RoPE
  halves         the q and k projections' output channels (kernel columns, bias, RMSNorm scale) permuted per
                 head from pair order (c0, c1, c2, c3, ...) to halves order (even channels, then odd ones),
                 inside the jitted function; RoPE is then `x*[cos, cos] + rotate_half(x)*[sin, sin]` on
                 contiguous halves. q.k per head is unchanged when q and k get the same permutation, so the
                 attention output is too; v is untouched
  halves_fused   both of the above
  bf16_out_rope  the current math, cast to the compute dtype right after the RoPE in one expression (no float32
                 q/k output for XLA to keep)

For each: milliseconds (median of `--iters`), TFLOP/s on the projection FLOPs (2*L*D*D*3), the speed-up over
`current`, XLA's bytes-accessed estimate, and the relative L2 error of the attention output (`--attn`) computed
from the variant's q/k/v against the one from `current`'s. The q/k biases and RMSNorm scales are randomised
first (init leaves them 0 and 1, where a permutation missing from them would not show). Sharding constraints
and remat names of `SelfAttention.qkv` are left out of the variants (a one-device run does not use them).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli  # noqa: E402
from benchmarks.dit_layer_breakdown import add_block_flags, block_inputs, block_setup, check_block_flags  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402

VARIANTS = ("current", "fused", "halves", "halves_fused", "bf16_out_rope")
VARIANT_FLAGS = {"fused": dict(fused=True), "halves": dict(halves=True),
                 "halves_fused": dict(fused=True, halves=True), "bf16_out_rope": {}}


def halves_order(head_dim):
  """One head's channels in halves order: the first channel of every RoPE pair, then the second ones."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def halves_perm(dim, num_heads):
  """`halves_order` inside each head over the full width D (heads keep their place)."""
  k = dim // num_heads
  return (np.arange(num_heads)[:, None] * k + halves_order(k)[None, :]).reshape(-1)


def to_halves(attn, which=("q", "k")):
  """A copy of `SelfAttention` `attn` whose `which` projections ("q", "k") give each head's channels in halves
  order: kernel columns, bias, int8/fp8 `kernel_scale` and the matching RMSNorm scale permuted."""
  import jax.numpy as jnp
  from flax import nnx
  perm = halves_perm(attn.q.kernel.shape[1], attn.num_heads)
  new = nnx.clone(attn)
  for name in which:
    dense, norm = getattr(new, name), getattr(new, f"norm_{name}")
    for var in (dense.kernel, dense.bias, getattr(dense, "kernel_scale", None), norm.scale):
      if var is not None:
        var.set_value(jnp.take(var[...], perm, axis=-1))
  return new


def apply_rope_halves(x, cos, sin):
  """RoPE of `x` `[B, L, N, K]` whose heads are in halves order (`halves_order`), float32: the tables of
  `rope.apply_rope` (`[L, K/2]` or `[B, L, K/2]`) used twice, `x*[cos, cos] + [-x2, x1]*[sin, sin]`."""
  import jax.numpy as jnp
  if cos.ndim == 2:
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  else:
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  x = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * jnp.concatenate([cos, cos], axis=-1) + rotated * jnp.concatenate([sin, sin], axis=-1)


def qkv_variant(attn, x, cos, sin, *, fused=False, halves=False, halves_which=("q", "k")):
  """`SelfAttention` `attn`, x `[B, L, D]` -> q, k, v `[B, L, N, K]` in the compute dtype. `fused`: one matmul
  for q|k|v; `halves`: q/k in halves order (`to_halves` with `halves_which`, then `apply_rope_halves`)."""
  from wanjax.dit.rope import apply_rope
  from wanjax.ops.fused import fused_dense
  cd, n = attn.compute_dtype, attn.num_heads
  if halves:
    attn = to_halves(attn, halves_which)
  q, k, v = fused_dense(x, (attn.q, attn.k, attn.v)) if fused else (attn.q(x), attn.k(x), attn.v(x))
  rope = apply_rope_halves if halves else apply_rope

  def heads(y):
    return y.reshape(y.shape[:-1] + (n, y.shape[-1] // n))

  return (rope(heads(attn.norm_q(q)), cos, sin).astype(cd), rope(heads(attn.norm_k(k)), cos, sin).astype(cd),
          heads(v).astype(cd))


def current_qkv(attn, x, cos, sin):
  """What `SelfAttention.attend` gives the attention kernel: `attn.qkv`, each cast to the compute dtype."""
  return tuple(a.astype(attn.compute_dtype) for a in attn.qkv(x, cos, sin))


def randomise_qk_affine(attn, key, spread=0.1):
  """Sets the q/k/v biases to N(0, spread) and the q/k RMSNorm scales to 1 + N(0, spread), in place."""
  import jax
  keys = iter(jax.random.split(key, 5))
  for var in (attn.q.bias, attn.k.bias, attn.v.bias):
    var.set_value((jax.random.normal(next(keys), var.shape) * spread).astype(var.dtype))
  for var in (attn.norm_q.scale, attn.norm_k.scale):
    var.set_value((1 + jax.random.normal(next(keys), var.shape) * spread).astype(var.dtype))


def random_block(cfg, policy, attn_impl):
  """(graphdef, state) of a `WanBlock` initialised on the device, with `randomise_qk_affine` applied to its
  self-attention (so that a permutation missing from the q/k biases or RMSNorm scales would show)."""
  import jax
  from flax import nnx
  from wanjax.dit.model import WanBlock

  def make():
    return WanBlock(cfg, policy=policy, rngs=nnx.Rngs(0), attn_impl=attn_impl)

  def init():
    b = make()
    randomise_qk_affine(b.self_attn, jax.random.key(1))
    return nnx.state(b)

  return nnx.split(nnx.eval_shape(make))[0], jax.jit(init)()


def rel_l2(a, b):
  """‖a - b‖ / ‖b‖ in float32."""
  import jax.numpy as jnp
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return jnp.linalg.norm(a - b) / jnp.linalg.norm(b)


def _bytes_accessed(compiled):
  """XLA's estimate of the bytes a compiled program reads and writes, or None where it gives none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - an estimate only; some backends raise
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  value = (cost or {}).get("bytes accessed")
  return None if value is None else float(value)


def run(args):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from wanjax import precision
  from wanjax.dit import layers
  from wanjax.ops.attention import attention

  cfg, grid = block_setup(args.model, args.small)
  L, D, n = grid[0] * grid[1] * grid[2], cfg.dim, cfg.num_heads
  policy = precision.get_policy("bf16")

  t0 = time.perf_counter()
  graphdef, state = random_block(cfg, policy, args.attn)
  init_s = time.perf_counter() - t0
  x, e0, _, cos, sin = block_inputs(cfg, grid, policy.compute_dtype)

  def norm1_mod(st, x):
    b = nnx.merge(graphdef, st)
    m = b.modulation[...].astype(jnp.float32)[None] + e0
    return layers.modulate(layers.norm_no_affine(x, b.eps), m[:, :, 0], m[:, :, 1])

  # h in the compute dtype (bf16). The block itself (and dit_layer_breakdown's qkv piece) passes the float32
  # modulate output, which each Dense casts; that convert is not in these timings.
  h = jax.jit(norm1_mod)(state, x).astype(policy.compute_dtype)

  def variant_fn(name):
    def fn(st, h, cos, sin):
      attn = nnx.merge(graphdef, st).self_attn
      if name == "current":
        return current_qkv(attn, h, cos, sin)
      return qkv_variant(attn, h, cos, sin, **VARIANT_FLAGS[name])
    return fn

  attend = jax.jit(lambda q, k, v: attention(q, k, v, impl=args.attn))
  err = jax.jit(lambda q, k, v, ref: rel_l2(attention(q, k, v, impl=args.attn), ref))
  flop = 2 * L * D * D * 3
  rows, ref = {}, None
  for name in VARIANTS:
    inputs = (state, h, cos, sin)
    compiled = jax.jit(variant_fn(name)).lower(*inputs).compile()
    ms = median_s(lambda: jax.block_until_ready(compiled(*inputs)), args.iters) * 1e3
    q, k, v = compiled(*inputs)
    if ref is None:
      ref = attend(q, k, v)
    finite = all(bool(jnp.isfinite(a).all()) for a in (q, k, v))
    bytes_accessed = _bytes_accessed(compiled)
    rows[name] = dict(ms=ms, tflops=flop / (ms / 1e3) / 1e12, dtype=str(q.dtype), finite=finite,
                      mb_accessed=None if bytes_accessed is None else bytes_accessed / 1e6,
                      attn_rel_err=float(err(q, k, v, ref)))
    del q, k, v
  for row in rows.values():
    row["speedup"] = rows["current"]["ms"] / row["ms"]
  dev = jax.devices()[0]
  return dict(bench="dit_qkv_variants", model=args.model, small=args.small, device=dev.device_kind, tokens=L,
              dim=D, heads=n, head_dim=cfg.head_dim, attn=args.attn, gflop=flop / 1e9, init_s=init_s,
              variants=rows)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_block_flags(p, attn_help="attention implementation of the equivalence check only")
  args = p.parse_args()
  check_block_flags(p, args)
  r = run(args)
  print(f"{r['model']} q/k/v on {r['device']}: {r['tokens']} tokens, dim {r['dim']}, {r['heads']} heads of "
        f"{r['head_dim']}, {r['gflop']:.1f} GFLOP of projections; attention check {r['attn']}")
  for name, row in r["variants"].items():
    mb = "     n/a" if row["mb_accessed"] is None else f"{row['mb_accessed']:8.1f}"
    print(f"  {name:>13}: {row['ms']:9.3f} ms  {row['tflops']:7.1f} TFLOP/s  x{row['speedup']:5.2f}  "
          f"{mb} MB accessed (XLA est.)  attention rel err {row['attn_rel_err']:.2e}  finite {row['finite']}")
  print(json.dumps(r))


if __name__ == "__main__":
  cli.run(main)
