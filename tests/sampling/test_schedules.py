"""Schedule grids against the reference tables (spec wan_model.md §6.2, §6.7; distillation.md §0.3–0.4, §5.2)."""

import numpy as np
import pytest

from wanjax import schedules
from wanjax.errors import UsageError

# Copied from the spec (computed there with the reference scheduler code).
T2V_50_SHIFT5 = [999, 995, 991, 987, 982, 978, 973, 968, 963, 957, 952, 946, 940, 934, 927, 920, 913, 906, 898,
                 890, 882, 873, 863, 854, 843, 833, 821, 809, 796, 783, 768, 753, 737, 720, 701, 681, 660, 636,
                 611, 584, 555, 522, 487, 448, 405, 356, 302, 241, 172, 92]
I2V_40_SHIFT3 = [999, 991, 982, 973, 963, 954, 944, 933, 922, 911, 899, 887, 874, 861, 847, 832, 817, 801, 785,
                 767, 749, 730, 710, 688, 666, 642, 617, 590, 562, 531, 499, 465, 428, 388, 345, 299, 249, 195,
                 136, 71]
I2V_40_SHIFT5 = [999, 994, 989, 983, 978, 972, 965, 959, 952, 944, 937, 929, 920, 911, 902, 892, 882, 870, 859,
                 846, 833, 818, 803, 786, 768, 749, 728, 706, 681, 654, 624, 591, 555, 514, 468, 416, 356, 288,
                 208, 113]


@pytest.mark.parametrize("n,shift,table", [(50, 5.0, T2V_50_SHIFT5), (40, 3.0, I2V_40_SHIFT3),
                                           (40, 5.0, I2V_40_SHIFT5)])
def test_unipc_timesteps_match_reference_tables(n, shift, table):
  sigmas, timesteps = schedules.unipc_sigmas(n, shift)
  assert timesteps.dtype == np.int64
  assert timesteps.tolist() == table
  assert sigmas.dtype == np.float32 and sigmas.shape == (n + 1,) and sigmas[-1] == 0


def test_unipc_sigma_values_and_grid():
  sigmas, _ = schedules.unipc_sigmas(50, 5.0)
  assert abs(sigmas[0] - 0.99979985) < 1e-8
  assert abs(sigmas[49] - 0.09250686) < 1e-8
  assert schedules.UNIPC_SIGMA_MAX == 0.9990000128746033
  # The original grid, not diffusers' linspace(1, 1/1000): last timestep 92 (diffusers gives 96).
  raw = np.linspace(schedules.UNIPC_SIGMA_MAX, 0, 51)[:-1]
  np.testing.assert_array_equal(sigmas[:-1], (5 * raw / (1 + 4 * raw)).astype(np.float32))


def test_dpm_grid_starts_at_one():
  sigmas, timesteps = schedules.dpm_sigmas(10, 5.0)
  assert sigmas[0] == 1.0 and timesteps[0] == 1000 and sigmas[-1] == 0
  raw = np.linspace(1, 0, 11)[:10]
  np.testing.assert_array_equal(timesteps, (5 * raw / (1 + 4 * raw) * 1000).astype(np.int64))


def test_lightx2v_step_list():
  sigmas, timesteps = schedules.step_list_sigmas((1000, 750, 500, 250), 5.0)
  np.testing.assert_allclose(sigmas, [1.0, 0.9375, 0.8333333, 0.625, 0.0], atol=1e-7)
  np.testing.assert_allclose(timesteps, [1000.0, 937.5, 833.3333, 625.0], atol=1e-4)
  assert timesteps.dtype == np.float32
  # Warped list == 1000·shift(s/1000) (distillation.md §0.4); CausVid's shift-8 list with a trailing 0.
  s8, t8 = schedules.step_list_sigmas((1000, 750, 500, 250, 0), 8.0)
  np.testing.assert_allclose(t8, [1000, 960, 888.889, 727.273, 0], atol=1e-3)


def test_flow_match_grid_and_lookup():
  grid = schedules.flow_match_grid(5.0)
  assert grid.shape == (1000,) and grid[0] == 1.0
  # t = 0 maps to the last grid point (distillation.md §0.3): σ = 0.0049801 at shift 5, 0.0079444 at shift 8.
  assert abs(schedules.nearest_grid_sigma(0.0, 5.0) - 0.0049801) < 1e-6
  assert abs(schedules.nearest_grid_sigma(0.0, 8.0) - 0.0079444) < 1e-6
  assert abs(schedules.nearest_grid_sigma(20.0, 5.0) - 0.01969) < 1e-5
  assert abs(schedules.nearest_grid_sigma(20.0, 8.0) - 0.02351) < 1e-5


@pytest.mark.torch
def test_flow_match_grid_matches_torch():
  torch = pytest.importorskip("torch")
  s = torch.linspace(1.0, 0.0, 1001)[:-1]
  ref = (5.0 * s / (1 + 4.0 * s)).numpy()
  grid = schedules.flow_match_grid(5.0)
  # torch's vectorised CPU linspace rounds some points differently (1 ULP, 2 after the shift) ...
  np.testing.assert_array_max_ulp(grid, ref, maxulp=2)
  # ... but the points the LightX2V / Self-Forcing lists use are bit-identical.
  idx = [1000 - s for s in (1000, 750, 500, 250)]
  np.testing.assert_array_equal(grid[idx], ref[idx])


@pytest.mark.parametrize("call,match", [
    (lambda: schedules.unipc_sigmas(0, 5.0), "num_steps=0"),
    (lambda: schedules.unipc_sigmas(10, 0.0), "shift=0.0"),
    (lambda: schedules.step_list_sigmas((750, 1000), 5.0), "strictly decreasing"),
    (lambda: schedules.step_list_sigmas((1200,), 5.0), "out of range"),
    (lambda: schedules.make_schedule("karras", num_steps=4), "unknown schedule"),
])
def test_bad_arguments_raise_usage_errors(call, match):
  with pytest.raises(UsageError, match=match):
    call()
