"""The ODE-init smoke (`make_ode_pairs` with `configs/train/ode_init.py:smoke=True`, then `train.distill` on its
pairs) exercises the maths, not only the plumbing: the random teacher's trajectories move (first latent != last)
and the first logged `loss/ode` is > 0. Before, the teacher's zero-initialised head gave v = 0, constant
trajectories and a loss of exactly 0.0 at every step."""

import os

import numpy as np
from safetensors.numpy import load_file

from configs.train import ode_init
from test_resume import read_events
from train import distill
from train import make_ode_pairs as mop


def test_smoke_pairs_move_and_the_ode_loss_is_positive(tmp_path):
  out = str(tmp_path / "pairs")
  c = ode_init.get_config("smoke=True")
  c.mesh = "data=1"   # the smoke as it runs on a plain CPU (one device; the tests fake 8)
  mop.run(c, out, num_steps=8, samples_per_shard=4, num_samples=4)
  lat = load_file(os.path.join(out, "shard-00000.safetensors"))["latents"].astype(np.float32)
  assert lat.shape == (4, 5, 3, 4, 6, 16) and np.all(np.isfinite(lat))
  moved = np.abs(lat[:, -1] - lat[:, 0]).mean(axis=(1, 2, 3, 4))        # per sample, noise |x| ~ 0.8
  assert np.all(moved > 0.05) and np.all(moved < 1.0), moved
  steps = np.abs(np.diff(lat, axis=1)).mean(axis=(0, 2, 3, 4, 5))
  assert np.all(steps > 1e-3), steps                                      # every kept slot differs from the last

  c.data.trajectories, c.total_steps, c.checkpoint_every, c.log_every = out, 1, 1, 1
  distill.train(c, str(tmp_path / "run"))
  losses = [(step, value) for _, step, kind, tag, value in read_events(str(tmp_path / "run" / "tb"))
            if tag == "loss/ode"]
  assert losses[0][0] == 1 and 1e-3 < losses[0][1] < 10.0, losses
