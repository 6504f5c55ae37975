"""`--config.sharding_overrides` reaches the sampler (docs/scaling.md: the 14B inference plans need
`embed=fsdp+context`): `load_dit(rules=...)` places the weights by the overridden table, the default leaves the
`embed` dimension replicated on a context mesh, and `sample.sharding_rules` reads the config field. The umT5
encoder and the VAE the sampler loads beside the DiT follow the same table (`load_umt5` / `load_vae(rules=...)`)."""

import os

import jax
import ml_collections
from flax import nnx

from infer import sample
from wanjax import sharding
from wanjax.dit.load import load_dit

TOY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "wanjax",
                   "toyworld", "checkpoints", "teacher")


def _fc1_spec(dit):
  return tuple(dit.blocks.ffn.fc1.kernel[...].sharding.spec)


def test_overrides_place_the_dits_weights():
  mesh = sharding.make_mesh("context=8", devices=jax.devices()[:8])
  plain = load_dit(TOY, mesh=mesh)
  rules = sample.sharding_rules(ml_collections.ConfigDict(dict(sharding_overrides="embed=fsdp+context")))
  placed = load_dit(TOY, mesh=mesh, rules=rules)
  # Stacked fc1 kernel [layers, embed, mlp]: the embed dimension is replicated by default, 8-way with the override.
  assert _fc1_spec(plain) == (None, None, None)
  assert _fc1_spec(placed) == (None, "context", None)   # fsdp has size 1 on this mesh
  for a, b in zip(jax.tree.leaves(nnx.state(plain)), jax.tree.leaves(nnx.state(placed))):
    assert (a == b).all()


def _specs(model):
  return {".".join(map(str, p)): tuple(v.get_value().sharding.spec)
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_overrides_place_the_text_encoder_and_vae_weights():
  from wanjax.text.load import load_umt5
  from wanjax.vae.load import load_vae
  mesh = sharding.make_mesh("context=2,tensor=4", devices=jax.devices()[:8])
  ckpt = os.path.dirname(TOY)
  rules = sample.sharding_rules(ml_collections.ConfigDict(dict(sharding_overrides="embed=fsdp+context, "
                                                                                  "conv_in=context")))
  for load, name in ((lambda **kw: load_umt5(os.path.join(ckpt, "umt5"), mesh=mesh, **kw), "umT5"),
                     (lambda **kw: load_vae(os.path.join(ckpt, "vae"), mesh=mesh, **kw), "VAE")):
    plain, placed = _specs(load()), _specs(load(rules=rules))
    moved = sorted(k for k in plain if plain[k] != placed[k])
    assert moved, f"{name}: no weight moved with the overrides"
    assert all("context" in placed[k] and "context" not in plain[k] for k in moved), (name, moved[:3])


def test_default_config_has_no_overrides():
  from configs.sample import toyworld
  c = toyworld.get_config()
  assert c.sharding_overrides == "" and sample.sharding_rules(c) == tuple(sharding.RULES)


def test_random_demo_models_are_placed_on_the_mesh():
  """The tiny random preset (`random_init=True`) places its DiT and VAE on `--config.mesh` by the same rule table
  as loaded weights, instead of leaving them on one device."""
  from configs.sample import tiny
  c = tiny.get_config("steps=1")
  c.mesh = "fsdp=2,tensor=2"
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:4])
  plan = sample.check(c)
  dit, vae = sample.build_dit(c, plan, mesh), sample.build_vae(c, mesh)
  for name, model in (("DiT", dit), ("VAE", vae)):
    specs = _specs(model)
    assert any(spec != () and any(a is not None for a in spec) for spec in specs.values()), name
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
      assert v.get_value().sharding.mesh.devices.size == 4, (name, p)
  q = dit.blocks.self_attn.q.kernel[...]
  assert tuple(q.sharding.spec) == tuple(sharding.spec_for(("layers", "embed", "heads"), q.shape, mesh))
