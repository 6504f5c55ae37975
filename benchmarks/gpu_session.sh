#!/usr/bin/env bash
# One prepared GPU session (run on a lent H100/H200 by the device tool): installs the wheels the device image
# lacks (prepare them here with: bash ../shared/tools/device-wheels tensorboardX; .device-wheels/ is git-ignored,
# so the device call must name it in carry), then runs the benchmarks in
# order of importance, each under its own timeout (T_<NAME> seconds; 0 skips it), teeing full logs to $OUT
# (the device tool returns at most 8 files), each starting with a JSON line of date, versions and card and a line
# with the command. Figures go to docs/bench/ and
# the closing note, with the card: `python benchmarks/archive_logs.py <files_at> --session N` writes the logs there
# with their header lines (pass GIT_REV=$(git rev-parse --short HEAD) in the device command to record the commit).
# The defaults run what is still unmeasured on an H100 (docs/bench/ has the rest, with dates and cards; session 12
# measured the block profile, the block variants, the VAE decode against diffusers, umT5, the 1.3B/14B forwards and
# the Self-Forcing fps after the bf16-matmul-output change; session 13 had no device; session 14 measured the
# whole-forward trace, the GELU epilogue (never fires), scan unroll 30 and dynamic-slice fusion (not adopted), the
# 1.3B/14B forwards and Self-Forcing with bf16 kernels, the carried cache and the late hand-over, and the DMD step
# that now fits). The goals of the performance issue are stated for an H100: name kind nvidia-h100-x1.
#   bash benchmarks/gpu_session.sh    # ~8 min (timeout_s 560): the bf16 VAE decode against diffusers (its convs
#                                     # write bf16 since session 12) and with the fold2d + subpixel conv forms;
#                                     # Self-Forcing with 4 attention lengths (kv_buckets) and with the VAE conv
#                                     # forms; the 4-step sampler end to end, cold then warm (bf16 kernels now)
#                                     # As time allows: T_ARPROF=90 (a device trace of one Self-Forcing run per
#                                     # program and kind), T_VAEPROF=60, T_BLOCKV=70 (rope_flip), T_MGPU=60 (Pallas
#                                     # attention), T_VAEF32OUT=70, T_DMDBF16=170, T_ARDSF=90 (dynamic-slice fusion),
#                                     # T_DIT14P=90 (14B under the bf16 policy), T_FWDF32K=60. The DMD step needs
#                                     # XLA_PYTHON_CLIENT_PREALLOCATE=true XLA_PYTHON_CLIENT_MEM_FRACTION=0.98 (this
#                                     # script grows the pool on demand, which fragments it).
#   D0="T_VAEBF16=0 T_VAEFORMS=0 T_ARKV=0 T_ARFORMS=0 T_SAMPLE=0 T_SAMPLE_WARM=0"   # the others:
#   env $D0 T_DIT13=90 T_ARND=60 T_FWDPROF=70 T_GELU=40 T_FWDUNROLL=130 T_DIT14=120 T_ATTNKV=40 T_ATTN8=40 T_T5=60 bash ...
#   env $D0 T_S14INT8=120 T_S14BF16=120 T_VAE=120 T_ATTN8_14B=30 T_LAYER=60 T_QKV=60 T_DMD=170 bash ...
set -o pipefail
python3 -m pip install -q --no-deps --no-index --find-links .device-wheels ml_collections diffusers tensorboardX \
  2>&1 | tail -2
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__)"
# One line for benchmarks/archive_logs.py: date, versions, card, driver (and the commit, if the caller passed GIT_REV).
HEADER=/tmp/gpu_session_header.json   # not in $OUT: the device tool returns at most 8 files
python3 - > "$HEADER" <<'PY'
import datetime, json, os, subprocess
import flax, jax, torch
try:
  import diffusers; dv = diffusers.__version__
except Exception:   # noqa: BLE001
  dv = None
try:
  q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                     text=True).stdout.strip().splitlines()
except OSError:
  q = []
name, driver = (q[0].split(", ") + [None])[:2] if q else (None, None)
print(json.dumps(dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), jax=jax.__version__,
                      flax=flax.__version__, torch=torch.__version__, diffusers=dv, card=name, driver=driver,
                      commit=os.environ.get("GIT_REV"))))
PY

bench() {  # bench NAME SECONDS CMD...: full log to $OUT/NAME.txt, the filtered tail to the console
  local name=$1 t=$2; shift 2
  [ "$t" = 0 ] && return
  echo "== $name (timeout ${t} s): $*"
  local t0=$SECONDS
  { echo "# $(cat "$HEADER" 2>/dev/null)"; echo "# $*"; } > "$OUT/$name.txt"   # header + command: archive_logs.py
  timeout "$t" "$@" 2>&1 | tee -a "$OUT/$name.txt" | grep -av "^[IW][0-9]\{4\} \|%|" | grep -avi "warn" | tail -n 12
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
# Cold, then warm over one persistent compilation cache (compile_total_s of the second run is the warm start).
JC=/tmp/wanjax_bench_jax_cache; rm -rf "$JC"
bench sample "${T_SAMPLE:-120}" python3 benchmarks/sample.py --vae-policy bf16 --compilation-cache "$JC"
bench sample_warm "${T_SAMPLE_WARM:-70}" python3 benchmarks/sample.py --vae-policy bf16 --compilation-cache "$JC"
bench dit_1_3b "${T_DIT13:-0}" python3 benchmarks/dit_forward.py --model t2v_1_3b --iters 5
bench dit_1_3b_profile "${T_FWDPROF:-0}" python3 benchmarks/dit_forward.py --only jax --model t2v_1_3b --iters 3 \
  --profile 2    # jax only, CUDA graphs off: the kernel table and idle gaps of the whole forward
bench gelu_epilogue "${T_GELU:-0}" python3 benchmarks/gelu_epilogue.py    # can XLA fold bias+GELU into fc1?
# XLA's GEMM rewriter folds bias + tanh GELU only into cuBLASLt matmuls, which are off by default:
bench gelu_epilogue_lt "${T_GELU:-0}" env XLA_FLAGS=--xla_gpu_enable_cublaslt=true python3 benchmarks/gelu_epilogue.py
gelu_won() {   # the bf16 spelling got a GELU epilogue under cuBLASLt and beat the model's form
  [ "${T_FWDGELU_FORCE:-0}" = 1 ] && return 0
  python3 - "$OUT/gelu_epilogue_lt.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], errors="replace") if l.startswith('{"bench": "gelu_epilogue"')]
if not rows: sys.exit(1)
f = rows[-1]["forms"]
b, m = f.get("bf16_formula", {}), f.get("model", {})
print(f"bf16_formula {b.get('ms')} ms epilogues {b.get('epilogues')} against model {m.get('ms')} ms")
sys.exit(0 if any("GELU" in e for e in b.get("epilogues", [])) and b["ms"] < m["ms"] else 1)
PY
}
if [ "${T_GELU:-0}" != 0 ] && gelu_won; then   # the jax forward with it (compare with dit_1_3b_unroll's jax line)
  bench dit_1_3b_gelu "${T_FWDGELU:-60}" env XLA_FLAGS=--xla_gpu_enable_cublaslt=true python3 benchmarks/dit_forward.py \
    --only jax --model t2v_1_3b --iters 5 --ffn-gelu bf16_formula
fi
# XLA copies each layer's weight slice out of the stacked weights in the scanned layer loop before the GEMMs read
# it (~93 MB per 1.3B layer in bf16); dynamic-slice fusion lets cuBLAS read the slice in place (jax only).
bench dit_1_3b_dsfusion "${T_FWDDSF:-0}" env XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=true python3 \
  benchmarks/dit_forward.py --only jax --model t2v_1_3b --iters 5
bench dit_1_3b_f32_kernels "${T_FWDF32K:-0}" python3 benchmarks/dit_forward.py --only jax --model t2v_1_3b --iters 5 \
  --f32-kernels    # float32 kernels cast in every forward (the form before session 14; session 12's 0.522 s)
bench dit_1_3b_unroll "${T_FWDUNROLL:-0}" python3 benchmarks/dit_forward.py --model t2v_1_3b --iters 5 \
  --scan-unroll 1,30   # the layer loop's cost: 1 and 30 layers per scan iteration (diffusers too)
bench layer_1_3b "${T_LAYER:-0}" python3 benchmarks/dit_layer_breakdown.py --iters 5 --profile 3 \
  --profile-dir "$OUT/layer_profile"     # brings back the block's optimised HLO (block_hlo.txt) beside the table
bench block_variants "${T_BLOCKV:-0}" python3 benchmarks/dit_block_variants.py --iters 5 --flag-sets default \
  --variants current,rope_flip    # RoPE without its concatenate (the other variants: docs/bench/h100_dit_block_variants_1_3b.txt)
bench qkv_variants "${T_QKV:-0}" python3 benchmarks/dit_qkv_variants.py
bench attn_mgpu "${T_MGPU:-0}" python3 benchmarks/attention_mgpu.py
# The forward with the Pallas attention only where its split-tail form beat cuDNN at 12 heads (T_FWDPALLAS_FORCE=1: always).
pallas_won() {
  [ "${T_FWDPALLAS_FORCE:-0}" = 1 ] && return 0
  python3 - "$OUT/attn_mgpu.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], errors="replace") if l.startswith('{"bench": "attention_mgpu"')]
if not rows: sys.exit(1)
shape = rows[-1]["shapes"][0]
best = min((v["ms"] for k, v in shape.items() if k.endswith("split_tail") and isinstance(v, dict) and "ms" in v),
           default=float("inf"))
print(f"pallas split-tail best {best:.3f} ms against cuDNN {shape['jax_cudnn']['ms']:.3f} ms")
sys.exit(0 if best < shape["jax_cudnn"]["ms"] else 1)
PY
}
if [ "${T_MGPU:-0}" != 0 ] && pallas_won; then
  bench dit_1_3b_pallas "${T_FWDPALLAS:-80}" python3 benchmarks/dit_forward.py --only jax --model t2v_1_3b --iters 5 \
    --attn pallas_gpu    # jax only: the forward with the Pallas Mosaic-GPU attention (opt-in impl)
fi
bench attn_kvlen "${T_ATTNKV:-0}" python3 benchmarks/attention_fp8.py --kv-lengths 4680,14040,32760
bench sample_14b_int8 "${T_S14INT8:-0}" python3 benchmarks/sample.py --model t2v_14b --policy bf16_weights \
  --quant int8 --cfg-steps 0 --skip-t5 --vae-policy bf16
bench sample_14b_bf16 "${T_S14BF16:-0}" python3 benchmarks/sample.py --model t2v_14b --policy bf16_weights \
  --cfg-steps 0 --skip-t5 --vae-policy bf16
bench vae_decode "${T_VAE:-0}" python3 benchmarks/vae_decode.py --modes chunked,tiled --iters 2
bench vae_decode_bf16 "${T_VAEBF16:-100}" python3 benchmarks/vae_decode.py --policy bf16 --modes chunked --iters 2 \
  --reference diffusers
bench vae_decode_bf16_f32out "${T_VAEF32OUT:-0}" python3 benchmarks/vae_decode.py --policy bf16 --modes chunked \
  --iters 2 --reference none --conv-out float32    # the convs' float32-product form, against vae_decode_bf16
bench vae_decode_bf16_forms "${T_VAEFORMS:-70}" python3 benchmarks/vae_decode.py --policy bf16 --modes chunked \
  --iters 2 --reference none --conv3d fold2d --upsample subpixel   # the alternative conv forms, same function
bench vae_decode_bf16_profile "${T_VAEPROF:-0}" python3 benchmarks/vae_decode.py --policy bf16 --modes chunked \
  --iters 1 --reference none --profile 1 --profile-top 20   # CUDA graphs off: kernel time by kind, longest kernels
bench dmd_step "${T_DMD:-0}" python3 benchmarks/dmd_step.py --iters 1
bench dmd_step_bf16_teacher "${T_DMDBF16:-0}" python3 benchmarks/dmd_step.py --iters 1 --teacher-param-dtype bfloat16
bench ar_sample "${T_AR:-0}" python3 benchmarks/ar_sample.py --iters 2
bench ar_sample_unrolled "${T_ARUNROLL:-0}" python3 benchmarks/ar_sample.py --iters 2 --scan-unroll 30
bench ar_sample_profile "${T_ARPROF:-0}" python3 benchmarks/ar_sample.py --iters 1 --profile 1   # per program, by kind
bench ar_sample_per_layer "${T_ARLAYER:-0}" python3 benchmarks/ar_sample.py --iters 2 --cache-per-layer   # the old form
bench ar_sample_dsfusion "${T_ARDSF:-0}" env XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=true python3 \
  benchmarks/ar_sample.py --iters 2     # the same flag for the Self-Forcing calls (weights and KV-cache slices)
bench ar_sample_f32_kernels "${T_ARF32K:-0}" python3 benchmarks/ar_sample.py --iters 2 --f32-kernels   # kernels cast per call
bench ar_sample_kv4 "${T_ARKV:-110}" python3 benchmarks/ar_sample.py --iters 2 --kv-buckets 4   # 4 attention lengths
bench ar_sample_vae_forms "${T_ARFORMS:-100}" python3 benchmarks/ar_sample.py --iters 2 --vae-conv3d fold2d \
  --vae-upsample subpixel      # the streamed decode in the other conv forms
bench ar_sample_nodecode "${T_ARND:-0}" python3 benchmarks/ar_sample.py --iters 2 --no-decode
bench t5_encode "${T_T5:-0}" python3 benchmarks/t5_encode.py --batches 1,2 --iters 5
bench attn_fp8 "${T_ATTN8:-0}" python3 benchmarks/attention_fp8.py
bench attn_fp8_14b "${T_ATTN8_14B:-0}" python3 benchmarks/attention_fp8.py --heads 40
bench dit_14b "${T_DIT14:-0}" python3 benchmarks/dit_forward.py --model t2v_14b --bf16-weights --iters 3
bench dit_14b_policy_bf16 "${T_DIT14P:-0}" python3 benchmarks/dit_forward.py --only jax --model t2v_14b --iters 3 \
  # the reference precision map (float32-path weights float32; block kernels bf16 since session 14), jax only
