"""Logical axis names, THE rule table mapping them to the mesh, and the helpers that apply it.

Every parameter carries logical axis names as `nnx.Param(..., axes=(...))` metadata (see `param`), and every
block-boundary activation is tagged with `constrain(x, names)`. `RULES` is the only place where logical names
meet the physical mesh axes `(data, fsdp, context, tensor)`; configs may prepend override rows, never copy it.

Parameters stacked by `nnx.vmap` over layers gain a leading axis that their metadata does not list; it is
named "layers" here (`param_axes`).
"""

import contextlib
import contextvars
import math
import re

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from wanjax.errors import UsageError

MESH_AXES = ("data", "fsdp", "context", "tensor")

RULES = (
    # weights
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("rel_buckets", None),     # T5 relative-position buckets (pos_embedding rows)
    # activations
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("text_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_kv", None),
    ("frames", None),
    ("height", "context"),
    ("width", None),
    ("channels", None),
)

_ACTIVE = contextvars.ContextVar("wanjax_sharding", default=None)


def param(value, axes, **metadata):
  """Wraps `value` in an `nnx.Param` carrying its logical axis names (one per dimension)."""
  if len(axes) != np.ndim(value):
    raise ValueError(f"axes {axes} do not match parameter rank {np.ndim(value)} (shape {np.shape(value)})")
  return nnx.Param(value, axes=tuple(axes), **metadata)


def param_axes(var) -> tuple:
  """Logical names of a Variable's dimensions; leading stacked dimensions are 'layers'."""
  meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
  axes = tuple(meta.get("axes", ()))
  ndim = len(np.shape(var.get_value() if hasattr(var, "get_value") else var))
  if len(axes) > ndim:
    raise ValueError(f"variable with axes {axes} has rank {ndim}")
  return ("layers",) * (ndim - len(axes)) + axes


def parse_mesh(spec, *, flag="--config.mesh") -> dict:
  """Parses 'data=2,fsdp=-1' (or a dict) into {axis: size}; -1 fills the remaining devices. `flag` names the
  setting in errors (the CLIs' `--config.mesh` unless a caller says otherwise, e.g. a benchmark's "--mesh")."""
  where = f"{flag}={spec!r}"
  if isinstance(spec, dict):
    sizes = dict(spec)
  else:
    sizes = {}
    for part in filter(None, (p.strip() for p in str(spec or "").split(","))):
      name, _, val = part.partition("=")
      name = name.strip()
      if name in sizes:
        raise UsageError(f"{where} names axis {name!r} twice; give each axis once, e.g. 'data=2,fsdp=-1'")
      try:
        sizes[name] = int(val)
      except ValueError:
        raise UsageError(f"{where}: bad entry {part!r}; expected axis=size, e.g. 'data=1,fsdp=-1'") from None
  bad = sorted(set(sizes) - set(MESH_AXES))
  if bad:
    raise UsageError(f"{where}: unknown mesh axes {bad}; valid: {', '.join(MESH_AXES)}")
  nonpositive = {a: v for a, v in sizes.items() if v < 1 and v != -1}
  if nonpositive:
    raise UsageError(f"{where}: axis sizes must be >= 1 (or -1 for the remaining devices), got {nonpositive}")
  return sizes


def make_mesh(spec="", devices=None, *, flag="--config.mesh") -> Mesh:
  """Builds a `(data, fsdp, context, tensor)` mesh; unspecified axes are 1, one axis may be -1 (fill). `flag`
  names the setting in errors and warnings (as `parse_mesh`)."""
  devices = list(devices if devices is not None else jax.devices())
  where = f"{flag}={spec!r}"
  sizes = {a: 1 for a in MESH_AXES}
  sizes.update(parse_mesh(spec, flag=flag))
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise UsageError(f"{where}: only one mesh axis may be -1, got {fill}")
  known = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if len(devices) % known:
      raise UsageError(f"{where}: {len(devices)} devices not divisible by {known}")
    sizes[fill[0]] = len(devices) // known
  total = math.prod(sizes.values())
  if total > len(devices) or total < 1:
    raise UsageError(f"{where} needs {total} devices; {len(devices)} available")
  if spec and 1 < total < len(devices):   # a multi-device mesh that leaves devices idle is said, not silently done
    from absl import logging
    logging.warning("%s uses %d of the %d devices (the first %d); the rest stay idle (e.g. an axis of -1 "
                    "fills them)", where, total, len(devices), total)
  arr = np.asarray(devices[:total]).reshape([sizes[a] for a in MESH_AXES])
  return Mesh(arr, MESH_AXES)


def spec_for(axes, shape, mesh, rules=RULES) -> P:
  """PartitionSpec for logical `axes` of an array of `shape`: unknown names raise; a mesh axis is used at most
  once; a dimension not divisible by its mesh axes stays replicated."""
  table = dict()
  for name, target in rules:
    table.setdefault(name, target)  # earlier rows win, so configs prepend overrides
  used, out = set(), []
  for name, dim in zip(axes, shape):
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise UsageError(f"logical axis {name!r} has no sharding rule; known: {', '.join(sorted(table))}")
    target = table[name]
    targets = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    targets = tuple(t for t in targets if t not in used and mesh.shape.get(t, 1) > 1)
    size = math.prod(mesh.shape[t] for t in targets) if targets else 1
    if not targets or dim % size:
      out.append(None)
      continue
    used.update(targets)
    out.append(targets[0] if len(targets) == 1 else targets)
  return P(*out)


def state_shardings(state, mesh, rules=RULES):
  """Maps an (abstract) nnx.State to a matching pytree of NamedShardings, from each Param's logical axes."""
  def one(var):
    shape = np.shape(var.get_value() if hasattr(var, "get_value") else var)
    if isinstance(var, nnx.Variable):
      return var.replace(NamedSharding(mesh, spec_for(param_axes(var), shape, mesh, rules)))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@contextlib.contextmanager
def activate(mesh, rules=RULES):
  """Makes `constrain` effective for code traced inside this context."""
  token = _ACTIVE.set((mesh, tuple(rules)))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _ACTIVE.reset(token)


def active_mesh():
  cur = _ACTIVE.get()
  return cur[0] if cur else None


def constrain(x, axes):
  """Tags activation `x` with logical axis names; a no-op outside `activate`."""
  cur = _ACTIVE.get()
  if cur is None:
    return x
  mesh, rules = cur
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec_for(axes, x.shape, mesh, rules)))


def override_rules(overrides: str, rules=RULES):
  """Prepends 'name=axis|none,name2=axis1+axis2' overrides to `rules`. A logical name the rules do not know or a
  mesh axis that does not exist is an error: `spec_for` would otherwise ignore the row and leave the arrays
  replicated (e.g. 'embed=fsdp+contxt')."""
  extra = []
  known = sorted({name for name, _ in rules})
  for part in filter(None, (p.strip() for p in (overrides or "").split(","))):
    name, _, target = part.partition("=")
    name = name.strip()
    if not re.fullmatch(r"[a-z_]+", name):
      raise UsageError(f"sharding_overrides: bad rule {part!r}; expected name=axis, e.g. 'embed=fsdp+context'")
    if name not in known:
      raise UsageError(f"sharding_overrides: unknown logical axis {name!r} in {part!r}; known: {', '.join(known)}")
    t = target.strip()
    axes = None if t in ("", "none", "None") else tuple(a.strip() for a in t.split("+"))
    bad = [a for a in axes or () if a not in MESH_AXES]
    if bad:
      raise UsageError(f"sharding_overrides: unknown mesh axis {bad[0]!r} in {part!r}; valid: "
                       f"{', '.join(MESH_AXES)} (join several with '+'), or none")
    extra.append((name, axes))
  return tuple(extra) + tuple(rules)
