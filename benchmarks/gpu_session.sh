#!/usr/bin/env bash
# One prepared GPU session (run on a lent H100/H200 by the device tool): installs the wheels the device image
# lacks (prepare them here with ../shared/tools/device-wheels), then runs the benchmarks in order of importance,
# each under its own timeout, teeing full logs to $OUT.
set -o pipefail
python3 -m pip install -q --no-deps --no-index --find-links .device-wheels ml_collections diffusers tensorboardX \
  2>&1 | tail -2
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__)"
timeout ${T_DIT13:-150} python3 benchmarks/dit_forward.py --model t2v_1_3b --iters 5 2>&1 | tee "$OUT/dit_1_3b.txt" | grep -vi warn
timeout ${T_SAMPLE:-130} python3 benchmarks/sample.py 2>&1 | tee "$OUT/sample.txt" | grep -v "^\s*$" | grep -vi warn | tail -30
timeout ${T_DIT14:-140} python3 benchmarks/dit_forward.py --model t2v_14b --bf16-weights --iters 3 2>&1 | tee "$OUT/dit_14b.txt" | grep -vi warn
