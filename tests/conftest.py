"""Test setup: 8 fake CPU devices (sharding tests) — must happen before jax is imported anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def max_rel_err(a, ref):
  """max|a - ref| / max|ref| — the parity metric used across tests."""
  a = np.asarray(a, np.float64)
  ref = np.asarray(ref, np.float64)
  assert a.shape == ref.shape, (a.shape, ref.shape)
  return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-30))


@pytest.fixture
def rel_err():
  return max_rel_err
