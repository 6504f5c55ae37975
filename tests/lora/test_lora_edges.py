"""LoRA inputs a user can get wrong: non-finite strengths, a lone `alpha`, rank-0 tensors, and the unmatched-key
message naming the CLI switches. Key matching runs on the abstract tiny DiT (`dry_run`, nothing allocated)
except where the merged values are checked."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from wanjax import checkpoint, lora
from wanjax.dit.config import get_config
from wanjax.dit.model import WanDiT
from wanjax.errors import CheckpointError, UsageError

TOL = 1e-6   # float32 merge vs float64 NumPy, relative to max|W|
D = 24       # tiny preset dim
P = "diffusion_model.blocks.1.self_attn.q"


@pytest.fixture(scope="module")
def abstract():
  return nnx.state(nnx.eval_shape(lambda: WanDiT(get_config("tiny"), rngs=nnx.Rngs(0))), nnx.Param)


def _pair(rng, r=3):
  return rng.normal(size=(r, D)).astype(np.float32), rng.normal(size=(D, r)).astype(np.float32)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_strength_is_refused(abstract, text):
  with pytest.raises(UsageError, match=rf"strength '{text}' .* not a finite number"):
    lora.parse_lora_specs(f"a.safetensors:0.5,b.safetensors:{text}")
  with pytest.raises(UsageError, match="not a finite number"):
    lora.merge_loras(abstract, [({}, float(text))], dry_run=True)
  assert lora.parse_lora_specs("a.safetensors:-1.5e-1")[0].strength == -0.15   # finite values still parse


def test_lone_alpha_is_unmatched(abstract, caplog):
  rng = np.random.default_rng(0)
  down, up = _pair(rng)
  t = {f"{P}.lora_down.weight": down, f"{P}.lora_up.weight": up, f"{P}.alpha": np.float32(1.5),
       "diffusion_model.blocks.2.ffn.0.alpha": np.float32(4.0)}   # its pair is missing from the file
  with pytest.raises(UsageError, match=r"1 LoRA key\(s\) match no model parameter") as e:
    lora.merge_loras(abstract, [(t, 1.0)], dry_run=True)
  assert "diffusion_model.blocks.2.ffn.0.alpha: alpha without a lora down/up pair" in str(e.value)
  assert lora.merge_loras(abstract, [(t, 1.0)], allow_unmatched=True, dry_run=True) == ["blocks.self_attn.q.kernel"]
  # An alpha beside a diff-only module (norms in LightX2V files) is not an error.
  t2 = {"diffusion_model.blocks.0.norm3.diff": np.ones(D, np.float32), "diffusion_model.blocks.0.norm3.alpha":
        np.float32(1.0)}
  assert lora.merge_loras(abstract, [(t2, 1.0)], dry_run=True) == ["blocks.norm3.scale"]


def test_unmatched_message_names_the_cli_switches(abstract):
  rng = np.random.default_rng(1)
  down, up = _pair(rng)
  t = {"diffusion_model.blocks.1.self_attn.qq.lora_down.weight": down,
       "diffusion_model.blocks.1.self_attn.qq.lora_up.weight": up}
  with pytest.raises(UsageError) as e:
    lora.merge_loras(abstract, [(t, 1.0)], dry_run=True)
  assert "--config.lora_allow_unmatched=True" in str(e.value) and "--lora-allow-unmatched" in str(e.value)


def test_rank_zero_is_a_checkpoint_error(abstract):
  t = {f"{P}.lora_down.weight": np.zeros((0, D), np.float32), f"{P}.lora_up.weight": np.zeros((D, 0), np.float32),
       f"{P}.alpha": np.float32(2.0)}
  with pytest.raises(CheckpointError, match=r"lora_down\.weight: down \(0, 24\) has rank 0"):
    lora.merge_loras(abstract, [(t, 1.0)], dry_run=True)


def test_alpha_beside_pair_still_scales():
  """The lone-alpha check must not disturb a normal pair: W += s·(alpha/r)·(up @ down).T on layer 1 only."""
  model = WanDiT(get_config("tiny"), rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(2)
  state = nnx.map_state(lambda p, v: v.replace(jnp.asarray(rng.normal(size=v.get_value().shape), jnp.float32)),
                        state)
  ref = np.asarray(checkpoint.flat_params(state)["blocks.self_attn.q.kernel"].get_value(), np.float64)
  down, up = _pair(rng)
  t = {f"{P}.lora_down.weight": down, f"{P}.lora_up.weight": up, f"{P}.alpha": np.float32(1.5)}
  got = np.asarray(checkpoint.flat_params(lora.merge_loras(state, [(t, 0.7)]))["blocks.self_attn.q.kernel"]
                   .get_value(), np.float64)
  want = ref.copy()
  want[1] += 0.7 * 1.5 / 3 * (up.astype(np.float64) @ down.astype(np.float64)).T
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert err <= TOL and not math.isclose(np.max(np.abs(got - ref)), 0.0)
