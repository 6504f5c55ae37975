"""The declarative name-table machinery shared by every model family.

A table is a tuple of `Row`s, one per parameter family. Each row gives the JAX target name, the source key
pattern in each torch layout, and the transform. `{i}` in a pattern stands for the layer index of stacked
blocks. Per-family tables live in `converters/names/<family>.py`; this module expands them into a concrete
plan for one layout and architecture, checks coverage (every source key used exactly once, every target
produced exactly once) and runs the plan tensor by tensor.

JAX safetensors layout (what `converters.convert` writes and `wanjax.checkpoint` reads): one tensor per
target key with `{i}` filled in (`blocks.3.self_attn.q.kernel`), already in JAX layout. Per-layer keys keep
conversion streaming (a stacked 14B FFN kernel would be 11 GB); the loader stacks them into the model's
`blocks.*` parameters shard by shard.
"""

import dataclasses
import re

import numpy as np

from converters import transforms
from wanjax.errors import CheckpointError, format_key_problems


@dataclasses.dataclass(frozen=True)
class Row:
  target: str                       # JAX key, e.g. "blocks.{i}.self_attn.q.kernel"
  sources: dict                     # layout -> torch key pattern; a missing layout = not in that layout
  transform: str = "none"
  when: tuple = ()                  # architecture tags this row needs, e.g. ("i2v",); empty = always
  part: tuple = None                # (k, n): take chunk k of n along axis 0 of the source before transforming
  optional: bool = False            # absent in some checkpoints of this layout (e.g. FLF2V emb_pos)


@dataclasses.dataclass(frozen=True)
class Step:
  source: str
  target: str
  transform: str
  part: tuple = None


def stacked_name(target_key: str) -> str:
  """'blocks.3.self_attn.q.kernel' -> ('blocks.self_attn.q.kernel'): the model param path of a layer key."""
  return re.sub(r"\.\d+(?=\.|$)", "", target_key, count=1)


def expand(table, layout, *, num_layers, tags=(), layer_key="{i}"):
  """Concrete list of Steps for `layout`. `num_layers` maps a layer-pattern prefix to its count, or is an int
  used for every `{i}` row. `tags` are the architecture tags that enable `when` rows."""
  steps = []
  for row in table:
    if row.when and not set(row.when) <= set(tags):
      continue
    pat = row.sources.get(layout)
    if pat is None:
      continue
    if layer_key in row.target:
      n = num_layers if isinstance(num_layers, int) else num_layers[row.target.split(".")[0]]
      for i in range(n):
        steps.append(Step(pat.replace(layer_key, str(i)), row.target.replace(layer_key, str(i)),
                          row.transform, row.part))
    else:
      steps.append(Step(pat, row.target, row.transform, row.part))
  return steps


def check_plan(steps, source_keys, *, ignore=(), optional_targets=()):
  """Raises CheckpointError listing missing source keys and unexpected (unused) ones."""
  needed = {s.source for s in steps}
  have = set(source_keys)
  missing = sorted(k for k in needed - have if not any(re.fullmatch(p, k) for p in optional_targets))
  unexpected = sorted(k for k in have - needed if not any(re.fullmatch(p, k) for p in ignore))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing key(s):\n" + format_key_problems([(k, "") for k in missing]))
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected key(s):\n" + format_key_problems([(k, "") for k in unexpected]))
    raise CheckpointError("checkpoint keys do not match the model:\n" + "\n".join(parts))
  targets = [s.target for s in steps]
  dup = sorted({t for t in targets if targets.count(t) > 1})
  if dup:
    raise AssertionError(f"name table produces these targets twice: {dup}")


def run_step(source, step, dtype=None):
  """Reads, slices and transforms one tensor. `dtype` (numpy dtype) casts floating tensors."""
  w = source.get(step.source)
  if step.part is not None:
    k, n = step.part
    if w.shape[0] % n:
      raise CheckpointError(f"{step.source}: shape {w.shape} cannot be split in {n} along axis 0")
    c = w.shape[0] // n
    w = w[k * c:(k + 1) * c]
  w = transforms.apply(step.transform, w)
  if dtype is not None and (np.issubdtype(w.dtype, np.floating) or w.dtype.kind == "V"):
    w = w.astype(dtype)
  return w


def check_shapes(steps, source, expected):
  """Compares transformed source shapes with `expected` (target key -> shape) without reading tensors.
  Lists every mismatch, sorted, with both shapes."""
  problems = []
  for s in steps:
    shape = tuple(source.shape(s.source))
    if s.part is not None:
      shape = (shape[0] // s.part[1],) + shape[1:]
    shape = _shape_after(s.transform, shape)
    want = expected.get(s.target)
    if want is None:
      problems.append((s.target, "no such parameter in the model"))
    elif tuple(want) != shape:
      problems.append((s.source, f"checkpoint {shape} vs model {tuple(want)} (as {s.target})"))
  if problems:
    raise CheckpointError("checkpoint shapes do not match the model:\n" + format_key_problems(problems))


def _shape_after(name, shape):
  return tuple(transforms.SHAPES[name](tuple(shape)))
