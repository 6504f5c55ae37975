"""WanDiT: patchify -> embed -> scanned blocks -> head -> unpatchify.

Mirrors `WanModel` and `WanAttentionBlock` of the reference `wan/modules/model.py` (spec `wan_model.md` §1) with
parameter paths following the original module tree (`blocks.self_attn.q`, `blocks.norm3`, `head.head`, ...);
block parameters are stacked on a leading layer axis (created with `nnx.split_rngs` + `nnx.vmap`, run with
`nnx.scan`). Latents are channels-last `[B, F, H, W, C]`. Precision follows `wanjax.precision` (§1.12): the
residual stream, norms, modulation, time MLP and head are float32; block matmuls and attention run in
`policy.compute_dtype`.

The forward is split into `embed`, `rope`, `blocks_forward` and `head_forward` so that block-wise generation
with a KV cache (explicit frame offsets, per-frame timesteps, cached cross-attention K/V) reuses this model
instead of a second one.
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax import precision
from wanjax import sharding as shd
from wanjax.dit import layers, rope
from wanjax.dit.attention import CrossAttention, CrossKV, SelfAttention
from wanjax.dit.config import DiTConfig
from wanjax.errors import UsageError
from wanjax.ops.attention import BlockCausal
from wanjax.nn import LayerNorm

F32 = jnp.float32
_ACT = ("batch", "length", "act_embed")
_TEXT = ("batch", "text_length", "act_embed")

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    # Save the outputs of the weight matmuls (no batch dims in their dot_general), recompute the rest.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Embedded(NamedTuple):
  """Output of `WanDiT.embed`."""
  tokens: jax.Array                  # [B, L, D] compute dtype (bf16 under the bf16 policy, §1.12)
  e: jax.Array                       # [B, G, D] float32 time embedding (head modulation); G = 1 or F frames
  e0: jax.Array                      # [B, G, 6, D] float32 block modulation
  context: jax.Array                 # [B, S, D] embedded text
  context_img: Optional[jax.Array]   # [B, 257|514, D] embedded CLIP tokens (i2v/flf2v) else None
  grid: tuple                        # (F', H', W') patch grid


class WanBlock(nnx.Module):
  """Reference `WanAttentionBlock` (§1.7): modulated self-attention, un-gated cross-attention after the affine
  `norm3`, modulated FFN after the non-affine `norm2`."""

  def __init__(self, cfg: DiTConfig, *, policy, attn_impl="auto", rngs: nnx.Rngs):
    d, pd = cfg.dim, policy.param_dtype
    self.eps = cfg.eps
    self.modulation = shd.param(jax.random.normal(rngs.params(), (1, 6, d), pd) / np.sqrt(d),
                                ("norm", "norm", "embed"))
    self.self_attn = SelfAttention(d, cfg.num_heads, eps=cfg.eps, policy=policy, attn_impl=attn_impl, rngs=rngs)
    self.norm3 = LayerNorm(d, eps=cfg.eps, affine=True, param_dtype=pd)
    self.cross_attn = CrossAttention(d, cfg.num_heads, eps=cfg.eps, image=cfg.has_image_input, policy=policy,
                                     attn_impl=attn_impl, rngs=rngs)
    self.ffn = layers.MLP(d, cfg.ffn_dim, d, act="gelu_tanh", compute_dtype=policy.compute_dtype,
                          param_dtype=pd, tag="ffn_hidden", rngs=rngs)
    self.compute_dtype = policy.compute_dtype

  def __call__(self, x, e0, context, context_img, cos, sin, mask=None, cross_kv: Optional[CrossKV] = None,
               round_norm1=False):
    """x `[B, L, D]`; e0 `[B, G, 6, D]`; cos/sin `[L, K/2]`; mask `[L, L]` or None; `cross_kv` replaces
    context/context_img when cached; `round_norm1` (bool or traced bool) rounds the norm1 output to the
    compute dtype, as the reference does in block 0 whose input is still the bf16 patch embedding (§1.12).
    Returns the float32 residual stream `[B, L, D]`."""
    x = shd.constrain(x, _ACT)
    m = self.modulation[...].astype(F32)[None] + e0.astype(F32)               # [B, G, 6, D]
    shift, scale, gate, c_shift, c_scale, c_gate = (m[:, :, i] for i in range(6))
    n1 = layers.norm_no_affine(x, self.eps)
    if round_norm1 is not False and self.compute_dtype != F32:
      n1 = jnp.where(round_norm1, n1.astype(self.compute_dtype).astype(F32), n1)
    h = layers.modulate(n1, shift, scale)
    x = layers.gated_residual(x, self.self_attn(h, cos, sin, mask), gate)
    # Quirk: cross-attention has neither modulation nor gate (§1.7 step 4).
    x = x + self.cross_attn(self.norm3(x), context, context_img, kv=cross_kv).astype(F32)
    h = layers.modulate(layers.norm_no_affine(x, self.eps), c_shift, c_scale)
    x = layers.gated_residual(x, self.ffn(h), c_gate)
    return shd.constrain(x, _ACT)

  def forward_cached(self, x, e0, cos, sin, cross_kv: CrossKV, layer_kv, update, round_norm1=False):
    """`__call__` with self-attention over a KV cache (block-wise autoregressive sampling, spec
    distillation.md §4.3): the new tokens' q/k (after RMSNorm + RoPE) and v go to
    `update(layer_kv, k, v) -> (k_all [B, S, N, K], v_all, key_lengths [B], layer_kv')`, which writes them into
    this layer's buffers; q then attends over the first `key_lengths` slots. Cross-attention uses the per-prompt
    `cross_kv`. Returns (float32 residual stream `[B, L, D]`, layer_kv')."""
    x = shd.constrain(x, _ACT)
    m = self.modulation[...].astype(F32)[None] + e0.astype(F32)               # [B, G, 6, D]
    shift, scale, gate, c_shift, c_scale, c_gate = (m[:, :, i] for i in range(6))
    n1 = layers.norm_no_affine(x, self.eps)
    if round_norm1 is not False and self.compute_dtype != F32:
      n1 = jnp.where(round_norm1, n1.astype(self.compute_dtype).astype(F32), n1)
    q, k, v = self.self_attn.qkv(layers.modulate(n1, shift, scale), cos, sin)
    k_all, v_all, key_lengths, layer_kv = update(layer_kv, k, v)
    x = layers.gated_residual(x, self.self_attn.attend(q, k_all, v_all, key_lengths=key_lengths), gate)
    x = x + self.cross_attn(self.norm3(x), kv=cross_kv).astype(F32)
    h = layers.modulate(layers.norm_no_affine(x, self.eps), c_shift, c_scale)
    x = layers.gated_residual(x, self.ffn(h), c_gate)
    return shd.constrain(x, _ACT), layer_kv


class WanDiT(nnx.Module):
  """The Wan2.1 DiT (T2V / I2V / FLF2V).

  `__call__(x, t, context, *, clip_fea=None, y=None, frames_per_block=None, guidance=None)`:
    x: `[B, F, H, W, 16]` noisy latent (channels last); H, W divisible by the patch size.
    t: `[B]` timesteps on the 0..1000 scale (ints allowed), or per-frame `[B, F]` (the block modulation and
      head modulation are then per frame; `t[:, None]` broadcast to all frames equals `t`).
    context: `[B, S, text_dim]` text states already zero-padded (the reference pads to 512 rows and attends to
      all of them; any S works).
    clip_fea: `[B, 257, image_dim]` (i2v) or `[B, 514, image_dim]` (flf2v) CLIP features.
    y: `[B, F, H, W, 20]` I2V conditioning (mask 4 + condition latent 16), appended to x's channels.
    frames_per_block: None (bidirectional) or N for the block-causal self-attention mask.
    guidance: `[B]` guidance scale on the 0..1000 scale (w·1000), only with `cfg.guidance_embed`.
  Returns the float32 velocity `[B, F, H, W, out_dim]`.

  All samples of a batch share one shape (no per-sample padding), so no key-length masking is needed.
  """

  def __init__(self, cfg: DiTConfig, *, policy="float32", rngs: nnx.Rngs, scan=True, remat="none",
               attn_impl="auto", scan_unroll=1):
    if remat not in REMAT_POLICIES:
      raise UsageError(f"remat={remat!r}; valid: {', '.join(REMAT_POLICIES)}")
    if isinstance(scan_unroll, bool) or not isinstance(scan_unroll, int) or scan_unroll < 1:
      raise UsageError(f"scan_unroll={scan_unroll!r} must be an int >= 1 (layers per iteration of the scanned loop)")
    policy = precision.get_policy(policy)
    self.cfg, self.policy, self.scan, self.remat = cfg, policy, bool(scan), remat
    # Layers per iteration of the scanned loop (jax.lax.scan's `unroll`): same maths, fewer loop iterations, a
    # longer compile. `benchmarks/dit_forward.py --scan-unroll` measures what the loop costs.
    self.scan_unroll = scan_unroll
    d, pd = cfg.dim, policy.param_dtype
    small = nnx.initializers.normal(0.02)   # text/time embedding init (§1.15)
    self.patch_embedding = layers.PatchEmbed(cfg.in_dim, d, cfg.patch_size, policy=policy, rngs=rngs)
    self.text_embedding = layers.MLP(cfg.text_dim, d, d, act="gelu_tanh", compute_dtype=policy.compute_dtype,
                                     param_dtype=pd, init1=small, init2=small, rngs=rngs)
    self.time_embedding = layers.MLP(cfg.freq_dim, d, d, act="silu", compute_dtype=F32, param_dtype=pd,
                                     init1=small, init2=small, rngs=rngs)
    self.time_projection = layers.TimeProjection(d, param_dtype=pd, rngs=rngs)
    if cfg.guidance_embed:
      # Zero-initialised output so that a fresh student equals its teacher (post_training.md A.2).
      self.guidance_embedding = layers.MLP(cfg.freq_dim, d, d, act="silu", compute_dtype=F32, param_dtype=pd,
                                           init2=nnx.initializers.zeros, rngs=rngs)
    else:
      self.guidance_embedding = None
    if cfg.has_image_input:
      self.img_emb = layers.ImageEmbedding(cfg.image_dim, d, num_tokens=cfg.num_image_tokens,
                                           with_pos=cfg.model_type == "flf2v", policy=policy, rngs=rngs)
    else:
      self.img_emb = None

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(r):
      return WanBlock(cfg, policy=policy, attn_impl=attn_impl, rngs=r)

    self.blocks = make_blocks(rngs)
    self.head = layers.Head(d, cfg.patch_dim * cfg.out_dim, eps=cfg.eps, param_dtype=pd, rngs=rngs)

  # ------------------------------------------------------------------------------------------- pieces

  def _check(self, x, t, context, clip_fea, y):
    cfg = self.cfg
    want_c = cfg.in_dim - (20 if cfg.has_image_input else 0)
    if x.ndim != 5 or x.shape[-1] != want_c:
      raise UsageError(f"x has shape {x.shape}; expected [B, F, H, W, {want_c}] (channels last)")
    b, f, h, w, _ = x.shape
    pt, ph, pw = cfg.patch_size
    if f % pt or h % ph or w % pw:
      raise UsageError(f"latent frames/height/width {(f, h, w)} must be divisible by the patch size "
                       f"{cfg.patch_size}")
    if t.shape not in ((b,), (b, f // pt)):
      raise UsageError(f"t has shape {t.shape}; expected [{b}] or per-frame [{b}, {f // pt}]")
    if context.ndim != 3 or context.shape[0] != b or context.shape[-1] != cfg.text_dim:
      raise UsageError(f"context has shape {context.shape}; expected [{b}, S, {cfg.text_dim}]")
    if cfg.has_image_input:
      n = cfg.num_image_tokens
      if clip_fea is None or clip_fea.shape != (b, n, cfg.image_dim):
        raise UsageError(f"model_type={cfg.model_type!r} needs clip_fea of shape [{b}, {n}, {cfg.image_dim}]; "
                         f"got {None if clip_fea is None else clip_fea.shape}")
      if y is None or y.shape != (b, f, h, w, 20):
        raise UsageError(f"model_type={cfg.model_type!r} needs y of shape [{b}, {f}, {h}, {w}, 20] (mask 4 + "
                         f"condition latent 16); got {None if y is None else y.shape}")
    elif clip_fea is not None or y is not None:
      raise UsageError("clip_fea/y are only used by i2v/flf2v models; this model is t2v")

  def time_embed(self, t, guidance=None):
    """t `[B]` or `[B, F]` -> (e `[B, G, D]`, e0 `[B, G, 6, D]`), float32 (§1.5)."""
    t = jnp.asarray(t)
    if t.ndim == 1:
      t = t[:, None]
    e = self.time_embedding(layers.sinusoid(t, self.cfg.freq_dim)).astype(F32)
    if guidance is not None:
      if self.guidance_embedding is None:
        raise UsageError("guidance was given but the config has guidance_embed=False")
      g = layers.sinusoid(jnp.asarray(guidance)[:, None], self.cfg.freq_dim)
      e = e + self.guidance_embedding(g).astype(F32)
    return e, self.time_projection(e)

  def embed(self, x, t, context, clip_fea=None, y=None, guidance=None) -> Embedded:
    """Patch, time, text and image embeddings (reference forward steps 1–6)."""
    x, t, context = jnp.asarray(x), jnp.asarray(t), jnp.asarray(context)
    self._check(x, t, context, clip_fea, y)
    if y is not None:
      x = jnp.concatenate([x.astype(F32), jnp.asarray(y, F32)], axis=-1)   # [noisy 16 | mask 4 | cond 16]
    tokens, grid = self.patch_embedding(x)
    tokens = shd.constrain(tokens, _ACT)
    e, e0 = self.time_embed(t, guidance)
    ctx = shd.constrain(self.text_embedding(context), _TEXT)
    ctx_img = None
    if self.img_emb is not None:
      ctx_img = shd.constrain(self.img_emb(jnp.asarray(clip_fea)), _TEXT)
    return Embedded(tokens, e, e0, ctx, ctx_img, grid)

  def rope(self, grid, frame_offset=0):
    """(cos, sin) `[L, K/2]` for a patch grid whose first frame sits at `frame_offset`."""
    return rope.rope_cos_sin(self.cfg.head_dim, grid, frame_offset)

  def cross_kv(self, context, context_img=None) -> CrossKV:
    """Cross-attention K/V of every layer, stacked `[num_layers, B, S, N, K]` (cache once per prompt)."""
    @nnx.scan(in_axes=(0, None, None), out_axes=0)
    def one(block, ctx, ctx_img):
      return block.cross_attn.cross_kv(ctx, ctx_img)
    return one(self.blocks, context, context_img)

  def blocks_forward(self, tokens, e0, context, context_img, cos, sin, *, mask=None,
                     cross_kv: Optional[CrossKV] = None):
    """Runs every block. `cross_kv` (from `cross_kv`) replaces context/context_img. Returns float32 `[B, L, D]`."""
    # The scan carry is the float32 residual stream; block 0's bf16 input is re-created by rounding its norm1
    # output (Quirk: §1.12, the patch embedding is bf16 until block 0's first residual add).
    round_first = tokens.dtype != F32
    x0 = tokens.astype(F32)

    def body(block, x, kv, index):
      return block(x, e0, context, context_img, cos, sin, mask, kv, round_norm1=round_first and index == 0)

    if self.remat != "none":
      body = nnx.remat(body, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan)
    layer_ids = jnp.arange(self.cfg.num_layers)
    if self.scan:
      scan = nnx.scan(body, in_axes=(0, nnx.Carry, None if cross_kv is None else 0, 0), out_axes=nnx.Carry,
                      unroll=self.scan_unroll)
      return scan(self.blocks, x0, cross_kv, layer_ids)
    # Debug path: a Python loop over the same stacked parameters.
    graphdef, state = nnx.split(self.blocks)
    x = x0
    for i in range(self.cfg.num_layers):
      block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
      kv = None if cross_kv is None else jax.tree.map(lambda a: a[i], cross_kv)
      x = body(block, x, kv, layer_ids[i])
    return x

  def blocks_forward_cached(self, tokens, e0, cos, sin, cross_kv: CrossKV, kv, update, carried=False):
    """`blocks_forward` over a KV cache: `kv` is a pytree stacked on the layer axis (e.g. (k, v), each
    `[num_layers, B, S, N, K]`), `update` as in `WanBlock.forward_cached`. Returns (float32 `[B, L, D]`, new kv).

    Two ways to thread the cache through the layer loop (same values):
    - per layer (default): each layer's slice is a loop input and its updated slice a loop output; `update(layer_kv,
      k, v)`. What a backward pass through the loop wants: it saves only per-layer slices.
    - `carried=True`: the whole stacked cache rides in the loop's carry and `update(kv, layer, k, v)` writes the new
      tokens into it in place; attention reads the layer's slice. For inference: the per-layer form moves every
      layer's whole cache slice into and out of the loop on every call (docs/decisions.md "KV cache in the carry"),
      but a differentiated loop would save the whole cache once per layer.
    """
    round_first = tokens.dtype != F32
    x0 = tokens.astype(F32)
    layer_ids = jnp.arange(self.cfg.num_layers)
    if carried:
      def body_c(block, carry, ckv, index):
        x, kv_all = carry
        return block.forward_cached(x, e0, cos, sin, ckv, kv_all, lambda c, k, v: update(c, index, k, v),
                                    round_norm1=round_first and index == 0)

      if self.remat != "none":
        body_c = nnx.remat(body_c, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan)
      if self.scan:
        scan = nnx.scan(body_c, in_axes=(0, nnx.Carry, 0, 0), out_axes=nnx.Carry, unroll=self.scan_unroll)
        return scan(self.blocks, (x0, kv), cross_kv, layer_ids)
      graphdef, state = nnx.split(self.blocks)
      carry = (x0, kv)
      for i in range(self.cfg.num_layers):
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
        carry = body_c(block, carry, jax.tree.map(lambda a: a[i], cross_kv), i)
      return carry

    def body(block, x, ckv, layer_kv, index):
      return block.forward_cached(x, e0, cos, sin, ckv, layer_kv, update, round_norm1=round_first and index == 0)

    if self.remat != "none":
      body = nnx.remat(body, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan)
    if self.scan:
      scan = nnx.scan(body, in_axes=(0, nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0), unroll=self.scan_unroll)
      return scan(self.blocks, x0, cross_kv, kv, layer_ids)
    graphdef, state = nnx.split(self.blocks)
    x, outs = x0, []
    for i in range(self.cfg.num_layers):
      block = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))
      x, layer_kv = body(block, x, jax.tree.map(lambda a: a[i], cross_kv), jax.tree.map(lambda a: a[i], kv),
                         layer_ids[i])
      outs.append(layer_kv)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *outs)

  def head_forward(self, x, e, grid):
    """Head + unpatchify: x `[B, L, D]`, e `[B, G, D]` -> float32 `[B, F, H, W, out_dim]` (§1.11)."""
    out = self.head(x, e)
    return layers.unpatchify(out, grid, self.cfg.patch_size).astype(F32)

  # ------------------------------------------------------------------------------------------- forward

  def __call__(self, x, t, context, *, clip_fea=None, y=None, frames_per_block=None, guidance=None):
    emb = self.embed(x, t, context, clip_fea, y, guidance)
    cos, sin = self.rope(emb.grid)
    mask = None
    if frames_per_block is not None:
      nf, nh, nw = emb.grid
      if int(frames_per_block) < 1:
        raise UsageError(f"frames_per_block={frames_per_block} must be >= 1")
      # A mask description, not a dense [L, L] array: the TPU splash kernel builds it tile by tile.
      mask = BlockCausal(int(frames_per_block) * nh * nw)
    h = self.blocks_forward(emb.tokens, emb.e0, emb.context, emb.context_img, cos, sin, mask=mask)
    return self.head_forward(h, emb.e, emb.grid)


def make_forward(model: WanDiT):
  """Splits `model` once for jit: returns `(forward, params, rest)` with the pure function
  `forward(params, rest, x, t, context, **kwargs) -> v` (kwargs as `WanDiT.__call__`). Jit it yourself, with
  `static_argnames=("frames_per_block",)` when that is used:
    forward, params, rest = make_forward(model)
    v = jax.jit(forward)(params, rest, x, t, context)
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def forward(params, rest, x, t, context, **kwargs):
    return nnx.merge(graphdef, params, rest)(x, t, context, **kwargs)

  return forward, params, rest


def abstract_model(cfg: DiTConfig, **kwargs) -> WanDiT:
  """The model with `jax.ShapeDtypeStruct` parameters (nothing allocated), for counting and loading."""
  return nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0), **kwargs))
