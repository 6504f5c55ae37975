"""umT5-XXL text encoder (encoder only) in Flax NNX.

Mirrors the reference `wan/modules/t5.py` (`T5Encoder` with `shared_pos=False`, `T5SelfAttention`,
`T5Attention`, `T5FeedForward`, `T5LayerNorm`, `T5RelativeEmbedding`) and, numerically, HF
`transformers` `UMT5EncoderModel` (spec `wan_model.md` §3). Blocks are stacked on a leading layer axis
(`nnx.vmap` at init, `nnx.scan` at call).

Precision: the released checkpoint is bf16 and the reference runs it in bf16 weights *and* activations without
autocast (§3.1), so parameters are stored in the policy's compute dtype and every op rounds to it where the
reference does (residual stream, norms' output, logits, probabilities). Under `float32` everything is fp32.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax import config_json
from wanjax import sharding as shd
from wanjax.errors import UsageError
from wanjax.nn import Dense
from wanjax.precision import get_policy


@dataclasses.dataclass(frozen=True, kw_only=True)
class UMT5Config:
  vocab: int
  dim: int
  dim_attn: int
  dim_ffn: int
  num_heads: int
  num_layers: int
  num_buckets: int = 32
  max_dist: int = 128
  eps: float = 1e-6

  def __post_init__(self):
    if self.dim_attn % self.num_heads:
      raise UsageError(f"dim_attn={self.dim_attn} is not divisible by num_heads={self.num_heads}")
    if self.num_buckets % 4:
      raise UsageError(f"num_buckets={self.num_buckets} must be a multiple of 4 (bidirectional, half exact)")

  @property
  def head_dim(self) -> int:
    return self.dim_attn // self.num_heads

  def to_json_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json_dict(cls, d: dict) -> "UMT5Config":
    return cls(**config_json.known_kwargs(cls, d, what="umT5", family=("umt5", "an umT5 encoder"),
                                          ignore=("family", "source_layout")))   # the converter's bookkeeping

  @classmethod
  def load(cls, path) -> "UMT5Config":
    return config_json.load(cls, path)


PRESETS = {
    "umt5_xxl": UMT5Config(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64,
                           num_layers=24),
    # Tests and toy worlds only: small, mutually different sizes (head dim 8).
    "tiny": UMT5Config(vocab=101, dim=24, dim_attn=24, dim_ffn=40, num_heads=3, num_layers=2),
    # The toy world's frozen text encoder: exactly its 32-id word vocabulary (docs/toyworld.md).
    "toyworld": UMT5Config(vocab=32, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2),
}


def get_config(name: str) -> UMT5Config:
  """Returns the preset called `name`; unknown names list the valid ones."""
  try:
    return PRESETS[name]
  except KeyError:
    raise UsageError(f"unknown umT5 preset {name!r}; valid: {', '.join(sorted(PRESETS))}") from None


def relative_position_bucket(rel, *, num_buckets=32, max_dist=128):
  """Bidirectional T5 bucket of `rel = key_pos - query_pos` (NumPy int array), exactly as §3.3.

  Computed on the host in float32 like the reference (`torch.log` of float32, truncation toward zero): the
  bucket grid depends only on the static sequence length, and a device `log` could differ by an ulp at the
  bucket edges (n = 16, 32, 64).
  """
  rel = np.asarray(rel, np.int64)
  nb = num_buckets // 2
  bucket = (rel > 0).astype(np.int64) * nb
  n = np.abs(rel)
  max_exact = nb // 2
  with np.errstate(divide="ignore"):
    ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
  large = ratio / np.float32(math.log(max_dist / max_exact)) * np.float32(nb - max_exact)
  large = max_exact + large.astype(np.float32).astype(np.int64)  # float -> int truncates toward zero
  large = np.minimum(large, nb - 1)
  return (bucket + np.where(n < max_exact, n, large)).astype(np.int32)


def bucket_grid(lq, lk, *, num_buckets=32, max_dist=128):
  """`[Lq, Lk]` int32 buckets for query i, key j (rel = j - i)."""
  rel = np.arange(lk)[None, :] - np.arange(lq)[:, None]
  return relative_position_bucket(rel, num_buckets=num_buckets, max_dist=max_dist)


def gelu_tanh(x):
  """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in x's dtype (the reference `GELU` module)."""
  return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3))))


class Embedding(nnx.Module):
  """`embedding [V, D]` lookup (torch `nn.Embedding.weight`), with logical axes."""

  def __init__(self, num, dim, *, axes, dtype, rngs: nnx.Rngs):
    init = nnx.initializers.normal(1.0)
    self.embedding = shd.param(init(rngs.params(), (num, dim), dtype), axes)

  def __call__(self, ids):
    return jnp.take(self.embedding[...], ids, axis=0)


class T5LayerNorm(nnx.Module):
  """RMS norm without mean subtraction or bias: fp32 statistics, cast to the activation dtype, × scale."""

  def __init__(self, dim, *, eps, dtype):
    self.eps = eps
    self.scale = shd.param(jnp.ones((dim,), dtype), ("norm",))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    return y.astype(self.scale.dtype) * self.scale[...]


class T5Attention(nnx.Module):
  """Self-attention without 1/√d scaling; logits + (relative position bias | finfo.min on padded keys)."""

  def __init__(self, cfg: UMT5Config, *, dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=False, compute_dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.q = Dense(cfg.dim, cfg.dim_attn, axes=("embed", "heads"), **kw)
    self.k = Dense(cfg.dim, cfg.dim_attn, axes=("embed", "heads"), **kw)
    self.v = Dense(cfg.dim, cfg.dim_attn, axes=("embed", "heads"), **kw)
    self.o = Dense(cfg.dim_attn, cfg.dim, axes=("heads", "embed"), **kw)
    self.num_heads = cfg.num_heads
    self.dtype = dtype

  def __call__(self, x, bias):
    """x `[B, L, D]`; bias `[B, N, L, L]` in the activation dtype."""
    b, l, _ = x.shape
    n = self.num_heads
    q = self.q(x).reshape(b, l, n, -1)  # [B, L, N, K]
    k = self.k(x).reshape(b, l, n, -1)
    v = self.v(x).reshape(b, l, n, -1)
    # Quirk (§3.2): the reference forms `q·kᵀ + bias` in the activation dtype (bf16), so logits are rounded to
    # bf16 before the fp32 softmax, and probabilities are rounded back before the PV product.
    logits = jnp.einsum("BLNK,BSNK->BNLS", q, k, preferred_element_type=jnp.float32).astype(self.dtype)
    logits = logits + bias
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("BNLS,BSNK->BLNK", probs, v, preferred_element_type=jnp.float32).astype(self.dtype)
    return self.o(out.reshape(b, l, -1))


class T5FeedForward(nnx.Module):
  """Gated GELU: `fc2(fc1(x) · gelu_tanh(gate(x)))`; gate = HF wi_0, fc1 = HF wi_1, fc2 = HF wo."""

  def __init__(self, cfg: UMT5Config, *, dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=False, compute_dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.gate = Dense(cfg.dim, cfg.dim_ffn, axes=("embed", "mlp"), **kw)
    self.fc1 = Dense(cfg.dim, cfg.dim_ffn, axes=("embed", "mlp"), **kw)
    self.fc2 = Dense(cfg.dim_ffn, cfg.dim, axes=("mlp", "embed"), **kw)

  def __call__(self, x):
    h = self.fc1(x) * gelu_tanh(self.gate(x))  # [B, L, M]
    h = shd.constrain(h, ("batch", "text_length", "act_mlp"))
    return self.fc2(h)


class T5Block(nnx.Module):
  """`T5SelfAttention` with its own relative position embedding (shared_pos=False)."""

  def __init__(self, cfg: UMT5Config, *, dtype, rngs: nnx.Rngs):
    self.norm1 = T5LayerNorm(cfg.dim, eps=cfg.eps, dtype=dtype)
    self.attn = T5Attention(cfg, dtype=dtype, rngs=rngs)
    self.pos_embedding = Embedding(cfg.num_buckets, cfg.num_heads, axes=("rel_buckets", "heads"), dtype=dtype,
                                   rngs=rngs)
    self.norm2 = T5LayerNorm(cfg.dim, eps=cfg.eps, dtype=dtype)
    self.ffn = T5FeedForward(cfg, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x, buckets, keep):
    """x `[B, L, D]`; buckets `[L, L]` int32; keep `[B, L]` bool (False = padding key)."""
    pos = jnp.transpose(self.pos_embedding(buckets), (2, 0, 1))  # [N, L, L]
    # The reference fills (not adds) finfo(dtype).min where the key is padding.
    bias = jnp.where(keep[:, None, None, :], pos[None], jnp.finfo(self.dtype).min).astype(self.dtype)
    x = x + self.attn(self.norm1(x), bias)
    x = x + self.ffn(self.norm2(x))
    return shd.constrain(x, ("batch", "text_length", "act_embed"))


class UMT5Encoder(nnx.Module):
  """Token embedding → scanned T5 blocks → final RMS norm. `__call__(ids [B, L], mask [B, L]) -> [B, L, D]`."""

  def __init__(self, cfg: UMT5Config, *, policy="bf16", rngs: nnx.Rngs, scan: bool = True):
    self.cfg = cfg
    self.policy = get_policy(policy)
    self.scan = scan
    dtype = self.policy.compute_dtype  # weights too: see the module docstring
    self.dtype = dtype
    self.token_embedding = Embedding(cfg.vocab, cfg.dim, axes=("vocab", "embed"), dtype=dtype, rngs=rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return T5Block(cfg, dtype=dtype, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.norm = T5LayerNorm(cfg.dim, eps=cfg.eps, dtype=dtype)

  def __call__(self, ids, mask):
    """ids `[B, L]` int; mask `[B, L]` (nonzero = real token) -> `[B, L, D]` in the activation dtype."""
    ids = jnp.asarray(ids, jnp.int32)
    if ids.ndim != 2 or tuple(np.shape(mask)) != tuple(ids.shape):
      raise UsageError(f"ids {tuple(ids.shape)} and mask {tuple(np.shape(mask))} must both be [B, L]")
    cfg = self.cfg
    l = ids.shape[1]
    keep = jnp.asarray(mask) != 0  # [B, L]
    buckets = jnp.asarray(bucket_grid(l, l, num_buckets=cfg.num_buckets, max_dist=cfg.max_dist))
    x = self.token_embedding(ids)  # [B, L, D]; no √D scaling
    x = shd.constrain(x, ("batch", "text_length", "act_embed"))
    if self.scan:
      @nnx.scan(in_axes=(nnx.Carry, 0, None, None), out_axes=nnx.Carry)
      def run(x, block, buckets, keep):
        return block(x, buckets, keep)

      x = run(x, self.blocks, buckets, keep)
    else:  # debugging: a Python loop over layer slices of the same stacked parameters
      graphdef, state = nnx.split(self.blocks)
      for i in range(cfg.num_layers):
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
        x = block(x, buckets, keep)
    return self.norm(x)


@nnx.jit
def forward_t5(model: UMT5Encoder, ids, mask):
  """Jitted encoder forward (for `infer.forward --component t5`): `[B, L]`, `[B, L]` -> `[B, L, D]`."""
  return model(ids, mask)


def count_params(cfg: UMT5Config) -> int:
  """Parameter count from `jax.eval_shape` (nothing is allocated)."""
  model = nnx.eval_shape(lambda: UMT5Encoder(cfg, policy="bf16", rngs=nnx.Rngs(0)))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
