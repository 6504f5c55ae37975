"""`benchmarks/dit_layer_breakdown.py --small` on CPU: every piece of the block runs and is finite, the pieces
chained reproduce the whole block (they are the block cut at its seams, so a piece that drifted from
`WanBlock.__call__` shows here), and the FLOP bookkeeping adds up. `--profile`: the kernel table of a traced run
(on CPU the XLA thunk events of the host plane), its aggregation, the trace reader on hand-written GPU traces, the
HLO lookup, and the flag checks."""

import json
import os
import subprocess
import sys

import pytest

from jax.profiler import ProfileData

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


SCRIPT = os.path.join(ROOT, "benchmarks", "dit_layer_breakdown.py")


def _run(*flags, env=None):
  proc = subprocess.run([sys.executable, SCRIPT, "--small", *flags], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


def test_small_run_pieces_rebuild_the_block():
  out, r = _run("--iters", "2")
  assert "kernels" not in r and "kernel_ms_per_block" not in r and "kernels of the whole block" not in out
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


def test_small_profile_tables_the_block_kernels(tmp_path):
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  out, r = _run("--iters", "1", "--profile", "2", "--profile-top", "1000", env={**os.environ, "TMPDIR": str(tmp)})
  assert isinstance(r["kernels"], list) and r["profile_calls"] == 2
  assert not [p for p in os.listdir(tmp) if p.startswith("dit_layer_profile_")]   # the trace was removed
  if not r["kernels"]:
    assert "profile: no per-kernel events in the trace of 2 block calls" in out
    assert r["kernel_ms_per_block"] == 0
    return
  # On CPU: the XLA thunks of the block's program, each once per call, named after HLO instructions of it.
  rows = r["kernels"]
  assert r["kernel_source"] == "host" and "kernels of the whole block (host trace, 2 calls)" in out
  assert len(rows) == r["kernel_names"] > 5
  assert [x["ms"] for x in rows] == sorted((x["ms"] for x in rows), reverse=True)
  assert all(x["count"] >= 1 and x["count"] == int(x["count"]) and x["ms"] > 0 for x in rows), rows
  assert sum(x["ms"] for x in rows) == pytest.approx(r["kernel_ms_per_block"])
  assert sum(x["pct"] for x in rows) == pytest.approx(100)
  assert all(x["shape"] and x["op"] for x in rows), [x for x in rows if not x["shape"]]
  assert any(x["op_name"].endswith("dot_general") for x in rows)


def test_small_profile_dir_keeps_the_trace(tmp_path):
  keep = tmp_path / "trace"
  out, r = _run("--iters", "1", "--profile", "2", "--profile-top", "3", "--profile-dir", str(keep))
  assert (keep / "block_hlo.txt").read_text().startswith("HloModule jit_block")
  assert r["profile_trace"].startswith(str(keep)) and r["profile_trace"].endswith(".xplane.pb")
  assert os.path.isfile(r["profile_trace"]) and f"trace kept: {r['profile_trace']}" in out
  if r["kernels"]:
    assert len(r["kernels"]) == 3 and f"{r['kernel_names'] - 3} more names" in out


def test_aggregate_kernels_per_call():
  from benchmarks.dit_layer_breakdown import aggregate_kernels
  # Two calls of a program: a fusion (1.5 + 2.5 ms), a gemm (4 ms each call), a custom call of two kernels.
  events = [("fusion.1", 1.5e6, "loop_add_fusion"), ("gemm.2", 4e6, "sm90_gemm"), ("cudnn.3", 6e6, "fmha_fwd"),
            ("cudnn.3", 2e6, "fmha_prep"), ("fusion.1", 2.5e6, "loop_add_fusion"), ("gemm.2", 4e6, "sm90_gemm"),
            ("cudnn.3", 6e6, "fmha_fwd"), ("cudnn.3", 2e6, "fmha_prep")]
  rows, total = aggregate_kernels(events, 2)
  assert total == pytest.approx(14.0)
  assert [(x["name"], x["count"], x["kernel"]) for x in rows] == [
      ("cudnn.3", 2, "fmha_fwd"), ("gemm.2", 1, "sm90_gemm"), ("fusion.1", 1, "loop_add_fusion")]
  assert [x["ms"] for x in rows] == pytest.approx([8.0, 4.0, 2.0])
  assert [x["pct"] for x in rows] == pytest.approx([400 / 7, 200 / 7, 100 / 7])
  # (name, duration) pairs: the kernel is the name; equal times sort by name.
  rows, total = aggregate_kernels([("b", 3e6), ("a", 3e6), ("c", 1e6)], 1)
  assert [(x["name"], x["ms"], x["kernel"]) for x in rows] == [("a", 3.0, "a"), ("b", 3.0, "b"), ("c", 1.0, "c")]
  assert total == pytest.approx(7.0)
  assert aggregate_kernels([], 3) == ([], 0.0)


def _space(device_lines, host_events=""):
  """An XSpace text proto: one GPU plane with `device_lines` (name, [(kernel id, duration_us, hlo_op or None)])
  and a host plane with `host_events`. Kernel ids: 1 loop_add_fusion, 2 an sdpa kernel, 3 a gemm."""
  lines = ""
  for i, (name, evs) in enumerate(device_lines):
    ev = "".join(f"events {{ metadata_id: {k} offset_ps: 0 duration_ps: {int(us * 1e6)} "
                 + (f'stats {{ metadata_id: 1 str_value: "{op}" }} ' if op else "") + "} " for k, us, op in evs)
    lines += f'lines {{ id: {i + 1} name: "{name}" timestamp_ns: 1000 {ev}}} '
  meta = ('event_metadata { key: 1 value { id: 1 name: "loop_add_fusion" } } '
          'event_metadata { key: 2 value { id: 2 name: "cudnn_generated_fort_native_sdpa_sm90" } } '
          'event_metadata { key: 3 value { id: 3 name: "sm90_xmma_gemm_bf16" } } '
          'stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }')
  host = ('planes { id: 2 name: "/host:CPU" lines { id: 1 name: "python" timestamp_ns: 1000 '
          + host_events + '} ' + meta + ' }')
  gpu = f'planes {{ id: 1 name: "/device:GPU:0" {lines}{meta} }} ' if device_lines else ""
  return ProfileData.from_text_proto(gpu + host)


def test_trace_events_reads_device_kernels_not_derived_lines():
  from benchmarks.dit_layer_breakdown import trace_events
  host = 'events { metadata_id: 1 offset_ps: 0 duration_ps: 9000000 stats { metadata_id: 1 str_value: "h.1" } } '
  pd = _space([("Stream #13(Compute)", [(1, 20, "loop_add_fusion.4"), (2, 500, "custom-call.2"), (3, 30, None)]),
               ("XLA Ops", [(1, 20, "loop_add_fusion.4")]), ("XLA Modules", [(1, 600, None)])], host)
  assert trace_events(pd) == ([("loop_add_fusion.4", 20000.0, "loop_add_fusion"),
                               ("custom-call.2", 500000.0, "cudnn_generated_fort_native_sdpa_sm90"),
                               ("sm90_xmma_gemm_bf16", 30000.0, "sm90_xmma_gemm_bf16")], "device")
  # No line named "Stream ...": every line but the derived ones.
  pd = _space([("Kernels", [(3, 7, "gemm.1")]), ("XLA Ops", [(3, 7, "gemm.1")])])
  assert trace_events(pd) == ([("gemm.1", 7000.0, "sm90_xmma_gemm_bf16")], "device")
  # No device plane: host events with an hlo_op stat (CPU thunks), only where the run is on a CPU.
  host += 'events { metadata_id: 3 offset_ps: 0 duration_ps: 5000000 } '
  assert trace_events(_space([], host)) == ([("h.1", 9000.0, "loop_add_fusion")], "host")
  assert trace_events(_space([], host), host=False) == ([], None)


def test_hlo_instructions_shape_and_kind():
  from benchmarks.dit_layer_breakdown import hlo_instructions
  hlo = "\n".join([
      "HloModule jit_block, entry_computation_layout={(f32[4]{0})->f32[4]{0}}",
      "",
      "ENTRY %main.1 (p.1: f32[4]) -> f32[4] {",
      '  %custom-call.3 = (bf16[1,12,32760,128]{3,1,2,0}, u8[0]{0}) custom-call(%a, %b, %c), '
      'custom_call_target="__cudnn$fmhaSoftmax", metadata={op_name="jit(block)/dot_product_attention"}, '
      'backend_config={"x":1}',
      "  %gemm_fusion_dot.2 = bf16[32760,4608]{1,0} fusion(%p0, %p1), kind=kCustom, calls=%c, "
      'metadata={op_name="jit(block)/WanBlock/dot_general"}, '
      'backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}',
      "  ROOT %loop_add_fusion = f32[1,32760,1536]{2,1,0} fusion(%x), kind=kLoop, calls=%f",
      "}"])
  assert hlo_instructions(hlo) == {
      "custom-call.3": ("(bf16[1,12,32760,128], u8[0])", "__cudnn$fmhaSoftmax", "jit(block)/dot_product_attention"),
      "gemm_fusion_dot.2": ("bf16[32760,4608]", "fusion __triton_gemm", "jit(block)/WanBlock/dot_general"),
      "loop_add_fusion": ("f32[1,32760,1536]", "fusion kLoop", ""),
  }


@pytest.mark.parametrize("flags,message", [
    (("--profile", "-1"), "--profile must be >= 0 (0 = off), got -1"),
    (("--profile", "1", "--profile-top", "0"), "--profile-top must be >= 1, got 0"),
    (("--profile-dir", "somewhere"), "--profile-dir 'somewhere' needs --profile N >= 1"),
])
def test_profile_flag_errors(flags, message):
  proc = subprocess.run([sys.executable, SCRIPT, *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(message), proc.stderr
  assert not os.path.exists(os.path.join(ROOT, "somewhere"))


def test_idle_gaps_union_and_pairs():
  from benchmarks.dit_layer_breakdown import idle_gaps
  # Two calls: a [0, 10) b [12, 20) (overlapping c [15, 18)), then a [30, 40) b [45, 50); times in us -> ns.
  us = 1000.0
  tl = [("a", 0, 10 * us), ("b", 12 * us, 20 * us), ("c", 15 * us, 18 * us), ("a", 30 * us, 40 * us),
        ("b", 45 * us, 50 * us)]
  r = idle_gaps(tl, calls=2)
  assert r["busy_ms"] == pytest.approx((10 + 8 + 10 + 5) / 2 / 1e3)
  assert r["span_ms"] == pytest.approx(50 / 2 / 1e3)
  assert r["idle_ms"] == pytest.approx((2 + 10 + 5) / 2 / 1e3)
  # The kernel before a gap is the one that ended last (b, not the shorter c inside it).
  assert r["gaps"] == [dict(between="b -> a", ms=pytest.approx(10 / 2 / 1e3)),
                       dict(between="a -> b", ms=pytest.approx((2 + 5) / 2 / 1e3))]
  assert idle_gaps([], 3) == dict(busy_ms=0.0, span_ms=0.0, idle_ms=0.0, gaps=[])
