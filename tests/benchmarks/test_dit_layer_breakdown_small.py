"""`benchmarks/dit_layer_breakdown.py --small` on CPU: every piece of the block runs and is finite, the pieces
chained reproduce the whole block (they are the block cut at its seams, so a piece that drifted from
`WanBlock.__call__` shows here), and the FLOP bookkeeping adds up."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def test_small_run_pieces_rebuild_the_block():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "dit_layer_breakdown.py"), "--small",
                         "--iters", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  pieces = r["pieces"]
  assert list(pieces) == ["norm1_mod", "qkv", "self_attn", "o_residual", "cross", "ffn", "block"]
  assert all(p["finite"] and p["ms"] > 0 for p in pieces.values()), pieces
  assert r["chained_vs_block_rel_err"] <= 1e-6
  assert pieces["block"]["gflop"] == pytest.approx(sum(p["gflop"] for k, p in pieces.items() if k != "block"))
  assert r["forward_est_s"] == pytest.approx(pieces["block"]["ms"] * r["layers"] / 1e3)


def test_flops_of_the_real_1_3b_block():
  from benchmarks.dit_layer_breakdown import piece_flops
  from wanjax.dit.config import get_config
  f = piece_flops(get_config("t2v_1_3b"), 32760, 512)
  # 1.3B forward at 32,760 tokens: 282.98 TFLOP over 30 blocks (dit_forward.py's count, which the H100 and H200
  # logs print) — the pieces must account for all of it.
  assert sum(f.values()) * 30 == 282980013834240
