"""Trainable LoRA adapters on DiT kernels, kept apart from the frozen base weights; export in the ComfyUI format.

Mirrors PEFT's `LoraLayer` as DRaFT reward fine-tuning uses it (spec `post_training.md` A.8: rank, alpha,
targets `.q .k .v .o` of self- and cross-attention and `ffn.0`, `ffn.2`, dropout 0). Each targeted Linear gets
`down` A `[r, in]` (PEFT's `lora_A` init: Kaiming-uniform with a=√5, i.e. U(±1/√in)) and `up` B `[out, r]`
(zeros, so a fresh adapter leaves the model unchanged), and computes

  y = x·W + (alpha/r)·x·(B·A)ᵀ            W frozen; in the JAX layout the kernel is `[in, out]`.

The base parameters are never written: `apply_lora` returns a new params pytree whose targeted kernels are
`W + (alpha/r)·Aᵀ·Bᵀ`, formed inside the traced forward so gradients reach only A and B. For stacked block
kernels `[L, in, out]` the adapters are stacked too (`down [L, r, in]`, `up [L, out, r]`). Forming the delta
(`in·out·r` multiply-adds per layer) is cheaper than the two extra token matmuls of the textbook form
(`tokens·(in+out)·r`) at video lengths, and gives the same function.

`export_tree` / `save` write the adapters with `wanjax.lora.save_lora` (`diffusion_model.<module>.lora_down/
lora_up.weight` + `.alpha`), which `wanjax.lora.merge_loras`, `infer.sample --config.lora`, LightX2V and ComfyUI
read.
"""

import jax
import jax.numpy as jnp
import numpy as np

from wanjax.errors import UsageError

# Target names (PEFT `target_modules` of the reference) -> kernel paths in the DiT params pytree.
TARGETS = {
    "q": ("blocks.self_attn.q.kernel", "blocks.cross_attn.q.kernel"),
    "k": ("blocks.self_attn.k.kernel", "blocks.cross_attn.k.kernel"),
    "v": ("blocks.self_attn.v.kernel", "blocks.cross_attn.v.kernel"),
    "o": ("blocks.self_attn.o.kernel", "blocks.cross_attn.o.kernel"),
    "ffn": ("blocks.ffn.fc1.kernel", "blocks.ffn.fc2.kernel"),
}


def _get(tree, path):
  for k in path.split("."):
    tree = tree[k]
  return tree


def _set(tree, path, value):
  """A copy of nested dict `tree` with the leaf at dotted `path` set (only the dicts on the path are copied)."""
  head, _, rest = path.partition(".")
  out = dict(tree)
  out[head] = _set(tree.get(head, {}), rest, value) if rest else value
  return out


def target_paths(targets) -> list:
  """Kernel paths for target names, e.g. ('q', 'ffn') -> ['blocks.self_attn.q.kernel', ...] (sorted)."""
  bad = sorted(set(targets) - set(TARGETS))
  if bad or not targets:
    raise UsageError(f"LoRA targets {tuple(targets)}: unknown {bad}; valid: {', '.join(TARGETS)}")
  return sorted({p for t in targets for p in TARGETS[t]})


def init_lora(key, params, *, rank, targets) -> dict:
  """Adapters for the DiT `params`: a nested dict mirroring the module paths, e.g.
  `{'blocks': {'self_attn': {'q': {'down': [L, r, in], 'up': [L, out, r]}}}}`, float32."""
  if int(rank) < 1:
    raise UsageError(f"LoRA rank={rank} must be >= 1")
  out = {}
  for i, path in enumerate(target_paths(targets)):
    kernel = _get(params, path)
    *lead, din, dout = kernel.shape
    bound = 1.0 / np.sqrt(din)
    down = jax.random.uniform(jax.random.fold_in(key, i), (*lead, rank, din), jnp.float32, -bound, bound)
    module = path[:-len(".kernel")]
    out = _set(out, module, {"down": down, "up": jnp.zeros((*lead, dout, rank), jnp.float32)})
  return out


def adapters(lora):
  """[(kernel path, down, up)] of a nested adapter tree, sorted by path."""
  out = []

  def walk(prefix, node):
    if "down" in node and "up" in node:
      out.append((prefix + ".kernel", node["down"], node["up"]))
      return
    for k in sorted(node):
      walk(f"{prefix}.{k}" if prefix else k, node[k])

  walk("", lora)
  return out


def delta(down, up):
  """Kernel delta in the JAX layout: `[.., r, in]`, `[.., out, r]` -> `[.., in, out]` (= (up @ down)ᵀ), float32."""
  return jnp.einsum("...ri,...or->...io", down.astype(jnp.float32), up.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def apply_lora(params, lora, scale):
  """Params with every adapted kernel replaced by `W + scale·delta` (cast back to W's dtype); `scale` = alpha/r.
  The input pytree is not modified."""
  for path, down, up in adapters(lora):
    w = _get(params, path)
    new = (w.astype(jnp.float32) + scale * delta(down, up)).astype(w.dtype)
    params = _set(params, path, new)
  return params


def scale_of(rank, alpha):
  """PEFT's scaling alpha / r (rank >= 1, alpha > 0: a zero scale would train nothing)."""
  if int(rank) < 1 or float(alpha) <= 0:
    raise UsageError(f"LoRA rank={rank}, alpha={alpha}: need rank >= 1 and alpha > 0 (reference: 128, 64)")
  return float(alpha) / float(rank)


def export_tree(lora) -> dict:
  """{jax param path: (down, up)} host arrays, as `wanjax.lora.save_lora` takes them."""
  return {path: (np.asarray(jax.device_get(down), np.float32), np.asarray(jax.device_get(up), np.float32))
          for path, down, up in adapters(lora)}


def save(path, lora, *, alpha, metadata=None):
  """Writes the adapters as a LightX2V/ComfyUI LoRA file (atomic); returns the written keys."""
  from wanjax.lora import save_lora
  return save_lora(path, export_tree(lora), alpha=alpha, metadata=metadata)
