"""The one timing rule of the benchmark scripts: one warm-up call (compilation, autotuning), then the median
wall time of `iters` calls, each waited for on the device."""

import time


def median_s(fn, iters, sync=None):
  """Median seconds of `fn()` over `iters` calls after one warm-up call. `fn` must wait for its own result
  (`block_until_ready`), or pass `sync`, called after every call (e.g. `torch.cuda.synchronize`)."""
  import numpy as np
  fn()
  if sync is not None:
    sync()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    if sync is not None:
      sync()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
