"""Peak memory and time of converting a full-size T2V-1.3B DiT (original Wan layout, fp32, ~5.7 GB).

Writes random weights with the real key names and shapes (streamed with `wanjax.checkpoint.StreamingWriter`,
so this script never holds the model either), converts them with `python -m converters.convert` in a
subprocess, and reports the child's peak RSS (`resource.getrusage(RUSAGE_CHILDREN)`) and wall time. Goal:
peak RSS < 2 GB, i.e. about one tensor at a time, never the whole model.

  python benchmarks/convert_memory.py [--preset t2v_1_3b] [--dtype bfloat16] [--tmpdir /big/disk] [--keep]

Prints one JSON line at the end.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from converters import table, transforms  # noqa: E402
from converters.names import dit  # noqa: E402
from wanjax.checkpoint import StreamingWriter  # noqa: E402
from wanjax.dit.config import get_config  # noqa: E402

from benchmarks import cli  # noqa: E402

GOAL_MB = 2048
_TORCH_SHAPE = {"none": lambda s: s, "linear_T": lambda s: (s[1], s[0]),
                "conv3d": lambda s: (s[4], s[3], s[0], s[1], s[2])}   # inverse of transforms.SHAPES


def original_entries(cfg):
  """(torch key, shape) of the original-layout checkpoint, from the name table and the converted shapes."""
  shapes = dit.file_shapes(cfg)
  steps = table.expand(dit.TABLE, "wan", num_layers=cfg.num_layers, tags=dit.tags(cfg))
  out = []
  for s in steps:
    torch_shape = tuple(_TORCH_SHAPE[s.transform](shapes[s.target]))
    assert tuple(transforms.SHAPES[s.transform](torch_shape)) == tuple(shapes[s.target])
    out.append((s.source, torch_shape))
  return out


def write_random(path, entries, seed=0):
  rng = np.random.default_rng(seed)
  w = StreamingWriter(path, [(k, np.float32, s) for k, s in entries], metadata={"format": "pt"})
  try:
    for k, s in entries:
      w.write(k, rng.standard_normal(s, dtype=np.float32))
  except BaseException:
    w.abort()
    raise
  w.close()


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="t2v_1_3b")
  ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                  help="converter output dtype (default: as stored, float32)")
  ap.add_argument("--tmpdir", default=None)
  ap.add_argument("--keep", action="store_true", help="keep the temporary files")
  args = ap.parse_args()
  cfg = get_config(args.preset)
  entries = original_entries(cfg)
  nbytes = sum(4 * int(np.prod(s)) for _, s in entries)
  largest = max(entries, key=lambda e: int(np.prod(e[1])))
  print(f"host: {platform.node()} ({os.cpu_count()} CPUs); preset {args.preset}: {len(entries)} tensors, "
        f"{nbytes / 2**30:.2f} GiB fp32; largest {largest[0]} {largest[1]} "
        f"({4 * int(np.prod(largest[1])) / 2**20:.0f} MiB); out dtype {args.dtype or 'as stored'}")
  tmp = tempfile.mkdtemp(prefix="convert_memory-", dir=args.tmpdir)
  try:
    src = os.path.join(tmp, "diffusion_pytorch_model.safetensors")
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump({"_class_name": "WanModel", "dim": cfg.dim, "num_heads": cfg.num_heads,
                 "num_layers": cfg.num_layers, "ffn_dim": cfg.ffn_dim, "model_type": cfg.model_type}, f)
    t0 = time.perf_counter()
    write_random(src, entries)
    t_write = time.perf_counter() - t0
    print(f"wrote the random checkpoint in {t_write:.1f} s")
    cmd = [sys.executable, "-m", "converters.convert", "--src", src, "--out", os.path.join(tmp, "out")]
    if args.dtype:
      cmd += ["--dtype", args.dtype]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    seconds = time.perf_counter() - t0
    if p.returncode:
      sys.exit(f"conversion failed:\n{p.stderr[-3000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024   # KiB on Linux
    out_bytes = os.path.getsize(os.path.join(tmp, "out", "model.safetensors"))
    print(p.stdout.strip().splitlines()[-1])
    result = {"benchmark": "convert_memory", "preset": args.preset, "layout": "wan", "tensors": len(entries),
              "src_gib": round(nbytes / 2**30, 3), "out_gib": round(out_bytes / 2**30, 3),
              "dtype": args.dtype or "as stored", "convert_s": round(seconds, 1),
              "peak_rss_mib": round(peak_mb, 1), "goal_mib": GOAL_MB, "ok": peak_mb < GOAL_MB}
    print(json.dumps(result))
  finally:
    if args.keep:
      print(f"kept {tmp}")
    else:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  cli.run(main)
