"""Model configs (frozen dataclasses) to and from the `config.json` of a converted model directory.

One rule for every family: fields not in the dataclass are an error naming them (except the converter's
bookkeeping keys a family lists), and a file of another family is refused before anything is built.
"""

import dataclasses
import json

from wanjax.errors import UsageError


def known_kwargs(cls, d: dict, *, what: str, ignore=(), family=None) -> dict:
  """The dataclass fields of `cls` found in the JSON dict `d`. `what` names the config in errors ("umT5");
  `ignore`: keys that may be present and are dropped; `family`: (key, description), e.g. ("umt5", "an umT5
  encoder"): the `family` key, when present, must be that key."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - known - set(ignore))
  if unknown:
    raise UsageError(f"unknown {what} config fields {unknown}; valid: {sorted(known)}")
  if family is not None and d.get("family", family[0]) != family[0]:
    raise UsageError(f"config family {d['family']!r} is not {family[1]} (expected {family[0]!r})")
  return {k: v for k, v in d.items() if k in known}


def load(cls, path):
  """`cls.from_json_dict` of the JSON file at `path`."""
  with open(path) as f:
    return cls.from_json_dict(json.load(f))
