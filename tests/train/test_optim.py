"""optax chain(clip_by_global_norm, adamw) vs torch AdamW + clip_grad_norm_ (distillation.md §1.6, §10)."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import max_rel_err
from train import state as st

STEP_TOL = 1e-6   # relative, float32


@pytest.mark.torch
@pytest.mark.parametrize("grad_scale", [0.1, 50.0])   # below and above the clip threshold 10
def test_one_step_matches_torch_adamw(grad_scale):
  import torch
  rng = np.random.default_rng(0)
  p0 = {"w": rng.standard_normal((5, 7)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}
  grads = [{k: (grad_scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in p0.items()}
           for _ in range(3)]
  tx = st.make_optimizer(lr=2e-3, b1=0.0, b2=0.999, eps=1e-8, weight_decay=0.01, clip=10.0)
  tr = st.init_trainee({k: jnp.asarray(v) for k, v in p0.items()}, tx)
  tp = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in p0.items()}
  opt = torch.optim.AdamW(list(tp.values()), lr=2e-3, betas=(0.0, 0.999), eps=1e-8, weight_decay=0.01)
  for g in grads:
    tr, gnorm = st.apply_updates(tr, {k: jnp.asarray(v) for k, v in g.items()}, tx)
    for k in tp:
      tp[k].grad = torch.tensor(g[k])
    tnorm = torch.nn.utils.clip_grad_norm_(list(tp.values()), 10.0)
    opt.step()
    assert abs(float(gnorm) - float(tnorm)) <= STEP_TOL * float(tnorm)
  for k in p0:
    assert max_rel_err(tr.params[k], tp[k].detach().numpy()) < STEP_TOL
    assert not np.allclose(np.asarray(tr.params[k]), p0[k])
