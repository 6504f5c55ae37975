"""`benchmarks/archive_logs.py`: a gpu_session.sh log becomes docs/bench/<card>_<name>.txt with the header line
the README cites (date, session, versions, card, driver), the note and the command, without log noise; existing
files are kept (the new one is suffixed with the session), and logs without the header are refused by name."""

import json
import os
import subprocess
import sys

from benchmarks.archive_logs import archive, card_prefix

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = dict(date="2026-12-01", jax="0.11.2", flax="0.12.10", torch="2.11.0+cu130", diffusers="0.42.1",
              card="NVIDIA H100 80GB HBM3", driver="580.159.04", commit="abc1234")


def _log(folder, name, body, header=HEADER, command="python3 benchmarks/ar_sample.py --iters 2"):
  lines = ([f"# {json.dumps(header)}"] if header is not None else []) + [f"# {command}"] + body
  (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")


def test_logs_are_filed_with_their_header(tmp_path):
  src, dest = tmp_path / "out", tmp_path / "bench"
  src.mkdir()
  dest.mkdir()
  _log(src, "ar_sample", ["I1201 12:00:00.000 noise", "t2v_1_3b on NVIDIA H100 80GB HBM3: 81 frames in 3.9 s",
                          " 50%|#####     | 1/2", '{"bench": "ar_sample", "fps": 20.7}'])
  (dest / "h100_ar_sample.txt").write_text("older\n")
  done = archive(str(src), str(dest), 14, notes={"ar_sample": "kv_buckets=4"})
  assert done == [("ar_sample.txt", str(dest / "h100_ar_sample_s14.txt"))]
  assert (dest / "h100_ar_sample.txt").read_text() == "older\n"
  assert (dest / "h100_ar_sample_s14.txt").read_text().splitlines() == [
      "# 2026-12-01 (session 14), device tool, jax 0.11.2, flax 0.12.10, torch 2.11.0+cu130, diffusers 0.42.1, "
      "NVIDIA H100 80GB HBM3 (driver 580.159.04), commit abc1234",
      "# kv_buckets=4",
      "# python3 benchmarks/ar_sample.py --iters 2",
      "t2v_1_3b on NVIDIA H100 80GB HBM3: 81 frames in 3.9 s",
      '{"bench": "ar_sample", "fps": 20.7}']
  assert card_prefix("NVIDIA H200") == "h200" and card_prefix(None) == "unknown"
  assert card_prefix("Some Card X") == "some_card_x"


def test_a_log_without_the_header_is_refused_by_name(tmp_path):
  src = tmp_path / "out"
  src.mkdir()
  _log(src, "old", ["figures"], header=None)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "archive_logs.py"), str(src),
                         "--session", "14", "--dest", str(tmp_path / "bench")], capture_output=True, text=True)
  assert proc.returncode == 2 and "old.txt: no gpu_session.sh header" in proc.stderr, proc.stderr
  assert not (tmp_path / "bench").exists()
