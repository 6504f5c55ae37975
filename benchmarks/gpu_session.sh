#!/usr/bin/env bash
# One prepared GPU session (run on a lent H100/H200 by the device tool): installs the wheels the device image
# lacks (prepare them here with: bash ../shared/tools/device-wheels tensorboardX; .device-wheels/ is git-ignored,
# so the device call must name it in carry), then runs the benchmarks in
# order of importance, each under its own timeout (T_<NAME> seconds; 0 skips it), teeing full logs to $OUT
# (the device tool returns at most 8 files). Figures go to docs/bench/ and the closing note, with the card.
# The defaults run what is still unmeasured on an H100 (docs/bench/ has the rest, with dates and cards); the goals
# of the performance issue are stated for an H100, so name kind nvidia-h100-x1 when the session has the time:
#   bash benchmarks/gpu_session.sh    # <= 9.8 min (about 6 expected): 1.3B end to end cold, then warm over
#                                     # the compile cache;
#                                     # Self-Forcing fps (now 34 DiT calls: no context pass after the last block);
#                                     # 1.3B forward vs diffusers (third measurement; it varied 1.005-1.13x),
#                                     # then one block cut into its pieces (where the non-attention time goes);
#                                     # whether cuDNN skips key-length-masked tiles (the AR cache's question);
#                                     # 14B forward vs diffusers (so far only on an H200)
#   T_SAMPLE=0 T_SAMPLE_WARM=0 T_AR=0 T_DIT13=0 T_LAYER=0 T_ATTNKV=0 T_DIT14=0 T_ARND=60 T_DMD=150 \
#     T_S14INT8=120 T_S14BF16=120 T_ATTN8=40 bash benchmarks/gpu_session.sh
#                                     # second call: Self-Forcing without decode (the DiT's share of the fps),
#                                     # the DMD step's 74 GiB peak on an 80 GB card, the 14B 4-step end to end
#                                     # and the FP8 probe (H200 figures exist for the last two)
#   T_VAE=120 T_VAEBF16=120 T_T5=60 T_ATTN8_14B=30 ...           # the others
set -o pipefail
python3 -m pip install -q --no-deps --no-index --find-links .device-wheels ml_collections diffusers tensorboardX \
  2>&1 | tail -2
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__)"

bench() {  # bench NAME SECONDS CMD...: full log to $OUT/NAME.txt, the filtered tail to the console
  local name=$1 t=$2; shift 2
  [ "$t" = 0 ] && return
  echo "== $name (timeout ${t} s): $*"
  local t0=$SECONDS
  timeout "$t" "$@" 2>&1 | tee "$OUT/$name.txt" | grep -av "^[IW][0-9]\{4\} \|%|" | grep -avi "warn" | tail -n 12
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
# Cold, then warm over one persistent compilation cache (compile_total_s of the second run is the warm start).
JC=/tmp/wanjax_bench_jax_cache; rm -rf "$JC"
bench sample "${T_SAMPLE:-120}" python3 benchmarks/sample.py --vae-policy bf16 --compilation-cache "$JC"
bench sample_warm "${T_SAMPLE_WARM:-70}" python3 benchmarks/sample.py --vae-policy bf16 --compilation-cache "$JC"
bench dit_1_3b "${T_DIT13:-90}" python3 benchmarks/dit_forward.py --model t2v_1_3b --iters 5
bench layer_1_3b "${T_LAYER:-60}" python3 benchmarks/dit_layer_breakdown.py
bench attn_kvlen "${T_ATTNKV:-40}" python3 benchmarks/attention_fp8.py --kv-lengths 4680,14040,32760
bench sample_14b_int8 "${T_S14INT8:-0}" python3 benchmarks/sample.py --model t2v_14b --policy bf16_weights \
  --quant int8 --cfg-steps 0 --skip-t5 --vae-policy bf16
bench sample_14b_bf16 "${T_S14BF16:-0}" python3 benchmarks/sample.py --model t2v_14b --policy bf16_weights \
  --cfg-steps 0 --skip-t5 --vae-policy bf16
bench vae_decode "${T_VAE:-0}" python3 benchmarks/vae_decode.py --modes chunked,tiled --iters 2
bench vae_decode_bf16 "${T_VAEBF16:-0}" python3 benchmarks/vae_decode.py --policy bf16 --modes chunked,tiled --iters 2
bench dmd_step "${T_DMD:-0}" python3 benchmarks/dmd_step.py --iters 1
bench ar_sample "${T_AR:-90}" python3 benchmarks/ar_sample.py --iters 2
bench ar_sample_nodecode "${T_ARND:-0}" python3 benchmarks/ar_sample.py --iters 2 --no-decode
bench t5_encode "${T_T5:-0}" python3 benchmarks/t5_encode.py --batches 1,2 --iters 5
bench attn_fp8 "${T_ATTN8:-0}" python3 benchmarks/attention_fp8.py
bench attn_fp8_14b "${T_ATTN8_14B:-0}" python3 benchmarks/attention_fp8.py --heads 40
bench dit_14b "${T_DIT14:-120}" python3 benchmarks/dit_forward.py --model t2v_14b --bf16-weights --iters 3
