"""Random torch-layout DiT state dicts for converter and CLI tests.

Keys and shapes are written from the spec tables (`wan_model.md` §2.2: original Wan layout), independently of
`converters/names/dit.py`; quantisation follows LightX2V (`distillation.md` §5.4).
"""

import ml_dtypes
import numpy as np


def original_shapes(cfg) -> dict:
  """Original Wan key -> shape (spec §2.2)."""
  d, m, e = cfg.dim, cfg.ffn_dim, cfg.image_dim
  pt, ph, pw = cfg.patch_size
  s = {"patch_embedding.weight": (d, cfg.in_dim, pt, ph, pw), "patch_embedding.bias": (d,),
       "text_embedding.0.weight": (d, cfg.text_dim), "text_embedding.0.bias": (d,),
       "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
       "time_embedding.0.weight": (d, cfg.freq_dim), "time_embedding.0.bias": (d,),
       "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
       "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
       "head.modulation": (1, 2, d), "head.head.weight": (pt * ph * pw * cfg.out_dim, d),
       "head.head.bias": (pt * ph * pw * cfg.out_dim,)}
  image = cfg.model_type in ("i2v", "flf2v")
  if image:
    s.update({"img_emb.proj.0.weight": (e,), "img_emb.proj.0.bias": (e,), "img_emb.proj.1.weight": (e, e),
              "img_emb.proj.1.bias": (e,), "img_emb.proj.3.weight": (d, e), "img_emb.proj.3.bias": (d,),
              "img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,)})
  if cfg.model_type == "flf2v":
    s["img_emb.emb_pos"] = (1, 514, e)
  for i in range(cfg.num_layers):
    b = f"blocks.{i}."
    s[b + "modulation"] = (1, 6, d)
    for a in ("self_attn", "cross_attn"):
      for p in ("q", "k", "v", "o") + (("k_img", "v_img") if image and a == "cross_attn" else ()):
        s[f"{b}{a}.{p}.weight"], s[f"{b}{a}.{p}.bias"] = (d, d), (d,)
      s[f"{b}{a}.norm_q.weight"] = s[f"{b}{a}.norm_k.weight"] = (d,)
    if image:
      s[b + "cross_attn.norm_k_img.weight"] = (d,)
    s[b + "norm3.weight"] = s[b + "norm3.bias"] = (d,)
    s[b + "ffn.0.weight"], s[b + "ffn.0.bias"] = (m, d), (m,)
    s[b + "ffn.2.weight"], s[b + "ffn.2.bias"] = (d, m), (d,)
  return s


def random_original(cfg, seed=0) -> dict:
  """Every tensor randomised (zero-init heads and norms included), scaled to keep activations O(1)."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, shape in original_shapes(cfg).items():
    if k.endswith("modulation"):
      v = rng.standard_normal(shape) / np.sqrt(shape[-1])
    elif len(shape) >= 2 and k != "img_emb.emb_pos":
      v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    elif "norm" in k or "proj.0.weight" in k or "proj.4.weight" in k:
      v = 1.0 + 0.1 * rng.standard_normal(shape) if k.endswith("weight") else 0.1 * rng.standard_normal(shape)
    else:
      v = 0.1 * rng.standard_normal(shape)
    out[k] = v.astype(np.float32)
  return out


def is_lightx2v_quantized(key, shape) -> bool:
  """LightX2V quantises the 2-D weights of blocks.N.{self_attn,cross_attn,ffn} (distillation.md §5.4)."""
  parts = key.split(".")
  return len(shape) == 2 and parts[0] == "blocks" and parts[2] in ("self_attn", "cross_attn", "ffn") \
      and key.endswith(".weight")


def quantize_lightx2v(sd, fmt="int8"):
  """(quantised state dict, {weight key: dequantised float32 weight}) with per-output-channel scales."""
  qmax = {"int8": 127.0, "fp8": 448.0}[fmt]
  out, deq = {}, {}
  for k, w in sd.items():
    if not is_lightx2v_quantized(k, w.shape):
      out[k] = w
      continue
    scale = (np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-5) / qmax).astype(np.float32)
    if fmt == "int8":
      q = np.clip(np.round(w / scale), -128, 127).astype(np.int8)
    else:
      q = np.clip(w / scale, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    out[k], out[k + "_scale"] = q, scale
    deq[k] = q.astype(np.float32) * scale
  return out, deq
