#!/usr/bin/env bash
# Retrains the toy world's VAE and DiT teacher on one lent GPU (the device tool), under wall-clock budgets, and
# packs the exported checkpoints, the log and the losses into $OUT. By default the DMD / SF students and the evaluation
# then run on CPU from those checkpoints (scripts/train_toyworld.py --stages dmd,eval). Prepare the wheels
# first (bash ../shared/tools/device-wheels tensorboardX) and carry .device-wheels. Budgets (seconds) can be
# set with VAE_S, TEACHER_S; CLIPS sets the dataset size; VAE_PRECISION=bf16 trains the VAE with bf16 compute
# (fp32 params; the fp32 convolutions are what limit the VAE's steps per second on the GPU).
# STAGES (default data,vae,features,teacher) picks the stages; the whole set on the GPU, students and evaluation
# included (issue 8's "all checkpoints in 10 minutes on one H100"), is
#   STAGES=data,vae,features,teacher,dmd,dmd2,dmd1,odepairs,ode,sf,eval VAE_S=130 TEACHER_S=70 bash scripts/gpu_toyworld.sh
# Every exported model comes back as $OUT/<model>.tar.
set -o pipefail
python3 -m pip install -q --no-deps --no-index --find-links .device-wheels ml_collections diffusers tensorboardX \
  2>&1 | tail -2
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/tw_out}; mkdir -p "$OUT"
W=${W:-/tmp/toyworld_gpu}; C=$W/ckpt; mkdir -p "$C"
cp -r wanjax/toyworld/checkpoints/umt5 wanjax/toyworld/checkpoints/tokenizer "$C/"   # frozen umT5 + vocab
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 scripts/train_toyworld.py --work "$W" --out "$C" --clips "${CLIPS:-4000}" --data_format npy \
  --stages "${STAGES:-data,vae,features,teacher}" --steps vae=100000,teacher=100000 --vae_precision "${VAE_PRECISION:-float32}" \
  --max_seconds "vae=${VAE_S:-150},teacher=${TEACHER_S:-90}" 2>&1 | tr '\r' '\n' | tee "$OUT/toyworld_gpu.log" \
  | grep -av "^[IW][0-9]\{4\} \|%|" | grep -avi "warn"
for m in vae teacher dmd dmd2 dmd1 sf; do [ -d "$C/$m" ] && tar -C "$C" -cf "$OUT/$m.tar" "$m"; done
cp "$C/train_log.json" "$OUT/" 2>/dev/null; cp "$W/losses.json" "$OUT/" 2>/dev/null
ls -la "$OUT"
