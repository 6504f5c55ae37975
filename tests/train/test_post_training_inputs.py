"""Post-training inputs at the edge (docs/post_training.md, followed as a user would):

- the latent shape of CFG / step distillation is read from `data.latents`; an explicit `data.latent_shape` that
  disagrees is one line naming both shapes; outside smoke runs the data is required (no silent random latents);
- a model with (or without) the guidance embedding in the wrong role is one line saying so;
- the recipe sections' own values are refused before any model, prompt or compile, naming the field;
- a `train.preprocess` feature folder alone (no prompts, no text encoder) trains CFG distillation (slow).
"""

import json
import os

import numpy as np
import pytest

from train import cfg_distill, reward, step_distill
from train import post_training as pt
from wanjax import sharding as shd
from wanjax.dit.config import PRESETS
from wanjax.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CK = os.path.join(ROOT, "wanjax", "toyworld", "checkpoints")


def _config(name, arg="smoke=True", **data):
  import importlib
  c = importlib.import_module(f"configs.train.{name}").get_config(arg)
  with c.unlocked():
    c.data.update(data)
  return c


def _shards(tmp_path, shape, n=4):
  d = tmp_path / "latents"
  d.mkdir()
  x = np.random.default_rng(0).standard_normal((n,) + tuple(shape)).astype(np.float32)
  np.save(d / "shard.npy", x)
  return str(d), x


def _train(module, c, tmp_path):
  module.train(c, str(tmp_path / "w"), shd.make_mesh(c.mesh), shd.override_rules(c.sharding_overrides))


# ------------------------------------------------------------------------------------------------ latent shape

def test_latent_shape_is_read_from_the_data(tmp_path):
  path, x = _shards(tmp_path, (2, 4, 4, 16))
  tiny = PRESETS["tiny"]
  c = _config("cfg_distill", latents=path, latent_shape=())
  source = pt.latent_source(c, tiny)
  assert source[1] == (2, 4, 4, 16)
  np.testing.assert_array_equal(pt.latent_getter(c, source, 4)([3, 0]), x[[3, 0]])
  c.data.latent_shape = (2, 4, 4)                  # an explicit shape that agrees is accepted
  assert pt.latent_source(c, tiny)[1] == (2, 4, 4, 16)
  c.data.latent_shape = (3, 4, 6)                  # the smoke preset's shape: both named, with the way out
  with pytest.raises(UsageError, match=r"latents have shape \(2, 4, 4, 16\) but data.latent_shape=\(3, 4, 6\); "
                                       r"set --config.data.latent_shape=\(\)"):
    pt.latent_source(c, tiny)
  with pytest.raises(UsageError, match="4 latents but 3 prompts"):
    pt.latent_getter(c, pt.latent_source(_config("cfg_distill", latents=path, latent_shape=()), tiny), 3)


def test_post_training_configs_take_the_shape_from_the_data():
  for name in ("cfg_distill", "step_distill"):
    assert tuple(_config(name, "model=toyworld").data.latent_shape) == ()
  for name in ("toyworld_cfg_distill", "toyworld_step_distill"):
    assert tuple(_config(name, "").data.latent_shape) == ()
    assert tuple(_config(name).data.latent_shape) == ()
  # The reward LoRA samples from noise: its shape is the preset's video (the toy world's 64x64x17).
  assert tuple(_config("reward_lora", "model=toyworld").data.latent_shape) == (5, 8, 8)
  assert tuple(_config("reward_lora", "model=t2v_1_3b").data.latent_shape) == (21, 60, 104)


def test_latents_required_and_checked_against_the_dit(tmp_path):
  c = _config("cfg_distill", random_contexts=0)   # a real run that forgot --config.data.latents
  with pytest.raises(UsageError, match="config.data.latents is empty"):
    _train(cfg_distill, c, tmp_path)
  with pytest.raises(UsageError, match=r"data.latent_shape=\(\) reads the shape from data.latents"):
    _train(step_distill, _config("step_distill", latent_shape=()), tmp_path)
  path, _ = _shards(tmp_path, (2, 3, 4, 16))      # H = 3 is not a multiple of the patch's 2
  with pytest.raises(UsageError, match=r"latents of shape \(2, 3, 4, 16\); the DiT denoises \[F, H, W, 16\]"):
    _train(cfg_distill, _config("cfg_distill", latents=path, latent_shape=()), tmp_path)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


# ------------------------------------------------------------------------------------------------ roles

def _model_dir(tmp_path, name, guidance):
  d = tmp_path / name
  d.mkdir()
  cfg = dict(PRESETS["tiny"].to_json_dict(), guidance_embed=guidance, family="dit", source_layout="wanjax")
  (d / "config.json").write_text(json.dumps(cfg))
  return str(d)


def test_guidance_embedding_in_the_wrong_role_is_one_line(tmp_path):
  plain, guided = _model_dir(tmp_path, "plain", False), _model_dir(tmp_path, "guided", True)
  c = _config("step_distill")
  c.models.teacher.weights = plain
  with pytest.raises(UsageError, match=r"models.teacher.weights=.*plain is not a CFG-distilled model .*the export "
                                       r"of configs/train/cfg_distill.py"):
    _train(step_distill, c, tmp_path)
  c = _config("cfg_distill")
  c.models.teacher.weights = guided
  with pytest.raises(UsageError, match=r"models.teacher.weights=.*guided is a CFG-distilled model"):
    _train(cfg_distill, c, tmp_path)
  c = _config("reward_lora")
  c.models.generator.weights = plain
  with pytest.raises(UsageError, match=r"reward_lora.guidance=8 samples through the guidance embedding"):
    _train(reward, c, tmp_path)


# ------------------------------------------------------------------------------------------------ values

@pytest.mark.parametrize("name,field,value,match", [
    ("step_distill", "step_distill.half2_target", "foo", r"step_distill.half2_target='foo'; valid: two_step"),
    ("step_distill", "step_distill.student_steps", 0, r"step_distill.student_steps=0 must be >= 1"),
    ("reward_lora", "reward_lora.rank", 0, r"reward_lora: LoRA rank=0"),
    ("reward_lora", "reward_lora.alpha", 0.0, r"reward_lora: LoRA rank=4, alpha=0.0"),
    ("reward_lora", "reward_lora.solver", "foo", r"reward_lora.solver: unknown solver 'foo'"),
    ("reward_lora", "reward_lora.backprop_steps", 5, r"reward_lora.backprop_steps=5 must be in \[1, "
                                                      r"reward_lora.sample_steps=3\]"),
    ("reward_lora", "reward_lora.sample_steps", 0, r"reward_lora.sample_steps=0 must be >= 1"),
    ("reward_lora", "data.latent_shape", (3, 5, 6), r"data.latent_shape=\(3, 5, 6\): latents of shape "
                                                     r"\(3, 5, 6, 16\); the DiT denoises"),
    ("reward_lora", "data.latent_shape", (), r"data.latent_shape=\(\): give \(F, H, W\) of the sampled"),
])
def test_recipe_values_refused_at_the_edge(tmp_path, name, field, value, match):
  c = _config(name)
  section, key = field.split(".")
  with c.unlocked():
    c[section][key] = value
  with pytest.raises(UsageError, match=match):
    _train(step_distill if name == "step_distill" else reward, c, tmp_path)
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_toy_reward_names_itself_for_other_prompts():
  c = _config("reward_lora")
  with pytest.raises(UsageError, match=r"reward_lora.reward='toy' scores toy-world prompts only .*: prompt 'a cat "
                                       r"on the beach' has words outside"):
    reward.make_reward(c.reward_lora, ["a cat on the beach"], 17)


def test_lora_learning_rate_schedule_as_logged():
  c = _config("reward_lora")
  fn = reward.lora_schedule(c.generator, 10, "cosine")
  np.testing.assert_allclose([float(fn(s)) for s in (0, 5, 10)], [1e-4, 5e-5, 0.0], atol=1e-10)
  assert float(reward.lora_schedule(c.generator, 10, "constant")(7)) == pytest.approx(1e-4)


# ------------------------------------------------------------------------------------------------ feature folder

@pytest.mark.slow
def test_cfg_distill_from_a_feature_folder_alone(tmp_path):
  """`--config.data.latents=FEATURES` and nothing else about the data: the latent shape (2, 4, 4) and the contexts
  (with the negative prompt's) come from the folder, which the shipped toy encoders wrote at 32x32x5."""
  from configs.data import toyworld as data_cfg
  from train import features
  from train import preprocess as pp
  from wanjax.dit.load import read_config
  from wanjax.toyworld.dataset import write_dataset
  write_dataset(str(tmp_path / "clips"), 3, seed=3, frames=17, size=32, fmt="npy")
  p = data_cfg.get_config()
  p.sizes, p.frames, p.random_encoders, p.text_dtype = ("32*32",), 5, False, "bf16"   # as the docs' command
  p.vae, p.text_encoder, p.tokenizer = (os.path.join(CK, k) for k in ("vae", "umt5", "tokenizer"))
  pp.run(p, str(tmp_path / "clips"), str(tmp_path / "feat"))
  fs = features.FeatureSet(str(tmp_path / "feat"))

  c = _config("toyworld_cfg_distill", latents=str(tmp_path / "feat"))
  c.models.teacher.weights = os.path.join(CK, "teacher")
  c.total_steps = c.checkpoint_every = 1
  ctx, neg = pt.latent_contexts(c, str(tmp_path / "w"), PRESETS["toyworld"])
  np.testing.assert_array_equal(np.asarray(ctx[[2, 0]]), np.stack([fs.tensor(i, "context") for i in (2, 0)]))
  np.testing.assert_array_equal(neg, fs.uncond("negative"))
  enc = _config("toyworld_cfg_distill", latents=str(tmp_path / "feat"), prompts=str(tmp_path / "feat"),
                text_encoder=os.path.join(CK, "umt5"), tokenizer=os.path.join(CK, "tokenizer"))
  ctx2, neg2 = pt.latent_contexts(enc, str(tmp_path / "enc"), PRESETS["toyworld"])   # its captions encoded again
  np.testing.assert_array_equal(np.asarray(ctx2[[2, 0]]), np.asarray(ctx[[2, 0]]))
  np.testing.assert_array_equal(neg2, neg)
  state = pt.train(c, str(tmp_path / "w"), shd.make_mesh(c.mesh), shd.override_rules(""))
  assert int(state.step) == 1
  assert read_config(str(tmp_path / "w" / "export"))[0].guidance_embed
  assert not os.path.exists(tmp_path / "w" / "prompt_cache")    # nothing was encoded again
  c.data.negative_prompt = "blurry"     # the folder's contexts carry the negative prompt it was made with
  with pytest.raises(UsageError, match="data.negative_prompt is set, but the contexts come from the feature"):
    pt.latent_contexts(c, str(tmp_path / "w"), PRESETS["toyworld"])


def test_post_training_resume_checks_the_config(tmp_path, monkeypatch):
  """The post-training trainers restore through the same driver as train.distill, with this run's config, so a
  checkpoint written under another config is reported (formerly `pt.run` passed no config: silent)."""
  from train import loop
  seen = {}

  class Stop(Exception):
    pass

  def fake_restore(manager, **kw):
    seen.update(kw)
    raise Stop

  monkeypatch.setattr(loop, "restore_or_create", fake_restore)
  c = _config("cfg_distill")
  with pytest.raises(Stop):
    pt.run(c, str(tmp_path), abstract_state={}, shardings={}, create=None, step_fn_for=None, batch_for=None,
           mesh=shd.make_mesh(""), rules=(), lrs=(("generator", 1e-4),))
  assert seen["config"] == loop.config_json(c) and seen["config"]


def test_latent_channels_are_the_vaes_not_the_i2v_input_width():
  """An I2V DiT reads 36 channels (16 noisy + 4 mask + 16 condition) but denoises the VAE's 16: the clean latents
  it trains on have out_dim channels (formerly checked against in_dim, refusing every real I2V latent)."""
  import dataclasses
  i2v = dataclasses.replace(PRESETS["tiny"], model_type="i2v", in_dim=36)
  pt.check_latent_shape("x", (2, 4, 4, 16), i2v)
  with pytest.raises(UsageError, match=r"x: latents of shape \(2, 4, 4, 36\); the DiT denoises \[F, H, W, 16\]"):
    pt.check_latent_shape("x", (2, 4, 4, 36), i2v)


def test_logged_lora_rate_follows_the_optimisers_count():
  """`lr/lora` is read at the schedule's own count: after a skipped (non-finite) step the optimiser state is
  kept, so the count, and the rate actually applied next, stay behind `state.step`."""
  import jax.numpy as jnp
  c = _config("reward_lora")
  tx = reward.lora_optimizer(c.generator, 10, "cosine")
  p = {"a": jnp.ones(3)}
  s = tx.init(p)
  assert int(reward.schedule_count(s)) == 0
  for _ in range(3):
    _, s = tx.update({"a": jnp.ones(3)}, s, p)
  assert int(reward.schedule_count(s)) == 3
