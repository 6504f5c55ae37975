"""CLIP ViT-H/14 visual tower (the I2V/FLF2V image encoder) in Flax NNX.

Mirrors the reference `wan/modules/clip.py` (`VisionTransformer`, `AttentionBlock`, `SelfAttention`,
`CLIPModel.visual` with `use_31_block=True`; spec `wan_model.md` §5) and, numerically, transformers
`CLIPVisionModel(...).hidden_states[-2]`: patch conv (no bias) → prepend class token → add position
embedding → pre-LayerNorm → the first `num_used_layers` pre-norm blocks → `[B, 1 + P, D]` (penultimate
tokens incl. CLS; block `num_layers − 1`, `post_norm` and `head` are never applied, so they are not built).

Layout: images are channels-last `[B, H, W, 3]`; the patch conv is a matmul over `(kh, kw, c)`-ordered
patches with the conv2d kernel `[kh, kw, 3, D]`. q, k and v are separate Dense layers (the original fused
`to_qkv` is split by the converter). Blocks are stacked on a leading layer axis (`nnx.vmap` at init,
`nnx.scan` at call).

Precision: the reference casts the weights to fp16 and runs under fp16 autocast with fp32 LayerNorm
statistics (§5.1). Here parameters stay in `policy.param_dtype`, matmuls and attention run in
`policy.compute_dtype` with fp32 accumulation, LayerNorm statistics, softmax and GELU are fp32, and the
residual stream is kept in fp32 (the reference rounds it to fp16 after every add; fp32 is closer to both the
fp16 and the fp32 result). The output is float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wanjax import config_json
from wanjax import sharding as shd
from wanjax.errors import UsageError
from wanjax.image.resize import bicubic_resize
from wanjax.nn import Dense, LayerNorm
from wanjax.ops.attention import attention
from wanjax.precision import get_policy

# torchvision Normalize constants of the open-clip / OpenAI CLIP preprocessing (§5.3).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPVisionConfig:
  image_size: int = 224
  patch_size: int = 14
  width: int = 1280
  num_layers: int = 32          # blocks in the checkpoint
  num_heads: int = 16
  mlp_dim: int = 5120
  eps: float = 1e-5
  num_used_layers: int = 31     # Wan uses the penultimate block's output (`use_31_block=True`)

  def __post_init__(self):
    if self.width % self.num_heads:
      raise UsageError(f"CLIP width={self.width} is not divisible by num_heads={self.num_heads}")
    if self.image_size % self.patch_size:
      raise UsageError(f"CLIP image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
    if not 1 <= self.num_used_layers <= self.num_layers:
      raise UsageError(f"CLIP num_used_layers={self.num_used_layers} must be in 1..num_layers={self.num_layers}")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """Class token + patches (257 for ViT-H/14 at 224)."""
    return 1 + self.grid ** 2

  def to_json_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json_dict(cls, d: dict) -> "CLIPVisionConfig":
    return cls(**config_json.known_kwargs(cls, d, what="CLIP", family=("clip", "a CLIP image encoder"),
                                          ignore=("family", "source_layout")))   # the converter's bookkeeping

  @classmethod
  def load(cls, path) -> "CLIPVisionConfig":
    return config_json.load(cls, path)


PRESETS = {
    "vit_h_14": CLIPVisionConfig(),
    # Tests only: small, mutually different sizes (grid 4 -> 17 tokens, head dim 8).
    "tiny": CLIPVisionConfig(image_size=28, patch_size=7, width=24, num_layers=3, num_heads=3, mlp_dim=40,
                             num_used_layers=2),
    # The tiny I2V demo's tower: 257 tokens (grid 16, as ViT-H/14 at 224) of width 18 = DiT `tiny_i2v`.image_dim.
    "tiny_i2v": CLIPVisionConfig(image_size=32, patch_size=2, width=18, num_layers=2, num_heads=3, mlp_dim=28,
                                 num_used_layers=1),
}


def get_config(name: str) -> CLIPVisionConfig:
  """Returns the preset called `name`; unknown names list the valid ones."""
  try:
    return PRESETS[name]
  except KeyError:
    raise UsageError(f"unknown CLIP preset {name!r}; valid: {', '.join(PRESETS)}") from None


class PatchEmbedding(nnx.Module):
  """Conv2d(3, D, kernel=stride=p, bias=False) as one matmul over non-overlapping patches."""

  def __init__(self, cfg: CLIPVisionConfig, *, policy, rngs: nnx.Rngs):
    p, d = cfg.patch_size, cfg.width
    init = nnx.initializers.lecun_normal()
    self.kernel = shd.param(init(rngs.params(), (p, p, 3, d), policy.param_dtype),
                            (None, None, "conv_in", "embed"))  # [kh, kw, C, D]
    self.patch_size = p
    self.compute_dtype = policy.compute_dtype

  def __call__(self, x):
    """x `[B, H, W, 3]` -> `[B, (H/p)·(W/p), D]` float32 (rounded to the compute dtype, as the reference)."""
    b, h, w, c = x.shape
    p = self.patch_size
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c)  # patch vector order (kh, kw, c) = the kernel's
    kernel = self.kernel[...].reshape(p * p * c, -1)
    cd = self.compute_dtype
    y = jnp.einsum("BLP,PD->BLD", x.astype(cd), kernel.astype(cd), preferred_element_type=jnp.float32)
    return y.astype(cd).astype(jnp.float32)


class SelfAttention(nnx.Module):
  """Multi-head self-attention with separate q/k/v projections and an output projection `proj`."""

  def __init__(self, cfg: CLIPVisionConfig, *, policy, attn_impl="auto", rngs: nnx.Rngs):
    d = cfg.width
    kw = dict(compute_dtype=policy.compute_dtype, param_dtype=policy.param_dtype, rngs=rngs)
    self.q = Dense(d, d, axes=("embed", "heads"), **kw)
    self.k = Dense(d, d, axes=("embed", "heads"), **kw)
    self.v = Dense(d, d, axes=("embed", "heads"), **kw)
    self.proj = Dense(d, d, axes=("heads", "embed"), out_dtype=jnp.float32, **kw)
    self.num_heads = cfg.num_heads
    self.attn_impl = attn_impl

  def __call__(self, x):
    """x `[B, L, D]` -> `[B, L, D]` float32."""
    b, l, d = x.shape
    n = self.num_heads
    q = self.q(x).reshape(b, l, n, d // n)  # [B, L, N, K]
    k = self.k(x).reshape(b, l, n, d // n)
    v = self.v(x).reshape(b, l, n, d // n)
    o = attention(q, k, v, scale=(d // n) ** -0.5, impl=self.attn_impl)
    return self.proj(o.reshape(b, l, d))


class MLP(nnx.Module):
  """fc1 → exact GELU → fc2 (reference `mlp.0`, `mlp.1 = nn.GELU()`, `mlp.2`)."""

  def __init__(self, cfg: CLIPVisionConfig, *, policy, rngs: nnx.Rngs):
    kw = dict(compute_dtype=policy.compute_dtype, param_dtype=policy.param_dtype, rngs=rngs)
    self.fc1 = Dense(cfg.width, cfg.mlp_dim, axes=("embed", "mlp"), out_dtype=jnp.float32, **kw)
    self.fc2 = Dense(cfg.mlp_dim, cfg.width, axes=("mlp", "embed"), out_dtype=jnp.float32, **kw)

  def __call__(self, x):
    h = jax.nn.gelu(self.fc1(x), approximate=False)  # exact erf GELU, not QuickGELU (§5.1)
    h = shd.constrain(h, ("batch", "length", "act_mlp"))
    return self.fc2(h)


class Block(nnx.Module):
  """Pre-norm transformer block: `x += proj(attn(norm1(x)))`, `x += mlp(norm2(x))`."""

  def __init__(self, cfg: CLIPVisionConfig, *, policy, attn_impl="auto", rngs: nnx.Rngs):
    self.norm1 = LayerNorm(cfg.width, eps=cfg.eps, param_dtype=policy.param_dtype)
    self.attn = SelfAttention(cfg, policy=policy, attn_impl=attn_impl, rngs=rngs)
    self.norm2 = LayerNorm(cfg.width, eps=cfg.eps, param_dtype=policy.param_dtype)
    self.mlp = MLP(cfg, policy=policy, rngs=rngs)
    self.compute_dtype = policy.compute_dtype

  def __call__(self, x):
    """x `[B, L, D]` float32 residual stream."""
    cd = self.compute_dtype
    # The reference LayerNorm computes in fp32 and casts back to the activation dtype before the matmuls.
    x = x + self.attn(self.norm1(x).astype(cd))
    x = x + self.mlp(self.norm2(x).astype(cd))
    return shd.constrain(x, ("batch", "length", "act_embed"))


class CLIPVisionTower(nnx.Module):
  """`__call__(pixels [B, S, S, 3] CLIP-normalised) -> [B, 1 + (S/p)², D]` penultimate-block tokens."""

  def __init__(self, cfg: CLIPVisionConfig, *, policy="float32", rngs: nnx.Rngs, scan: bool = True,
               attn_impl: str = "auto"):
    self.cfg = cfg
    self.policy = policy = get_policy(policy)
    self.scan = scan
    d = cfg.width
    self.patch_embedding = PatchEmbedding(cfg, policy=policy, rngs=rngs)
    std = d ** -0.5  # the reference init scale of cls/pos embeddings
    self.cls_embedding = shd.param(
        std * jax.random.normal(rngs.params(), (d,), policy.param_dtype), ("embed",))
    self.pos_embedding = shd.param(
        std * jax.random.normal(rngs.params(), (cfg.num_tokens, d), policy.param_dtype), (None, "embed"))
    self.pre_norm = LayerNorm(d, eps=cfg.eps, param_dtype=policy.param_dtype)

    @nnx.split_rngs(splits=cfg.num_used_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return Block(cfg, policy=policy, attn_impl=attn_impl, rngs=rngs)

    self.blocks = make_blocks(rngs)

  def __call__(self, pixels):
    cfg = self.cfg
    s = cfg.image_size
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (s, s, 3):
      raise UsageError(f"CLIP tower expects preprocessed pixels [B, {s}, {s}, 3], got {tuple(pixels.shape)}; "
                       f"use preprocess() or encode_image() for raw [-1, 1] images")
    x = self.patch_embedding(jnp.asarray(pixels, jnp.float32))  # [B, P, D]
    b = x.shape[0]
    cls = jnp.broadcast_to(self.cls_embedding[...].astype(jnp.float32), (b, 1, cfg.width))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...].astype(jnp.float32)[None]  # [B, L, D]
    x = self.pre_norm(x)
    x = shd.constrain(x, ("batch", "length", "act_embed"))
    if self.scan:
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def run(x, block):
        return block(x)

      x = run(x, self.blocks)
    else:  # debugging: a Python loop over layer slices of the same stacked parameters
      graphdef, state = nnx.split(self.blocks)
      for i in range(cfg.num_used_layers):
        x = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))(x)
    return x


def preprocess(image, size: int = 224):
  """`[B, H, W, 3]` image in [-1, 1] -> `[B, size, size, 3]` CLIP input (§5.3).

  Squash-resize (no crop) with torch's bicubic, then `x·0.5 + 0.5` (no clamp), then CLIP mean/std.
  """
  image = jnp.asarray(image, jnp.float32)
  if image.ndim != 4 or image.shape[-1] != 3:
    raise UsageError(f"CLIP preprocess expects [B, H, W, 3] images in [-1, 1], got shape {tuple(image.shape)}")
  x = bicubic_resize(image, (size, size)) * 0.5 + 0.5
  mean = jnp.asarray(CLIP_MEAN, jnp.float32)
  std = jnp.asarray(CLIP_STD, jnp.float32)
  return (x - mean) / std


@nnx.jit
def _tower_forward(tower: CLIPVisionTower, pixels):
  return tower(pixels)


def encode_image(tower: CLIPVisionTower, image):
  """`[B, H, W, 3]` image in [-1, 1] -> `[B, 257, 1280]` (ViT-H/14) float32 features (jitted tower)."""
  return _tower_forward(tower, preprocess(image, tower.cfg.image_size))


def clip_features(tower: CLIPVisionTower, images):
  """The DiT's `clip_fea`: one `[H, W, 3]` image, a batch `[B, H, W, 3]`, or a list of `[H, W, 3]` images of
  any sizes (FLF2V: [first, last]) in [-1, 1] -> `[N, 1 + P, D]` float32.

  Each image is resized to the CLIP size on its own, as the reference does (`CLIPModel.visual`).
  """
  if isinstance(images, (list, tuple)):
    arrays = [jnp.asarray(im, jnp.float32) for im in images]
    bad = [tuple(a.shape) for a in arrays if a.ndim != 3]
    if bad:
      raise UsageError(f"clip_features: list entries must be [H, W, 3] images, got shapes {bad}")
    pixels = jnp.concatenate([preprocess(a[None], tower.cfg.image_size) for a in arrays])
    return _tower_forward(tower, pixels)
  image = jnp.asarray(images, jnp.float32)
  if image.ndim == 3:
    image = image[None]
  return encode_image(tower, image)


def count_params(cfg: CLIPVisionConfig) -> int:
  """Parameter count of the built tower (first `num_used_layers` blocks) from `nnx.eval_shape`."""
  model = nnx.eval_shape(lambda: CLIPVisionTower(cfg, policy="float32", rngs=nnx.Rngs(0)))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
