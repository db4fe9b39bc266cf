#!/usr/bin/env bash
# The GPU checks that issues 16 and 18 still need, as one prepared run for a lent device machine:
#   1. `bench --device cuda`: the per-stage GAN rows (targets 20 ms / 80 ms / 12 ms) and the toy
#      DeltaEdit-D edit (target 0.3 s);
#   2. the toy DeltaEdit-D stage on the GPU budget, stopped at a checkpoint after $MINUTES
#      (rerun the script at once to continue it, while the machine is warm: the run folder is in
#      $WORK, and a fresh machine starts bare), then scored by `eval`
#      on the same device once it has finished.
# Run from the repository root. Results (at most 8 files) go to $OUT, the device tool's folder.
# Missing packages travel as wheels in .whl/ (see the device tool's README); fetch them here once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0 \
#       diffusers==0.42.1 importlib_metadata==10.2.0
# and name .whl in the call's carry.
# Try it here first:  DEVICE=cpu BUDGET=smoke BENCH_ONLY=diffusion OUT=/tmp/gpu-checks bash scripts/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-checks}
WORK=${WORK:-/tmp/deltaedit-gpu-checks}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-gpu}
MINUTES=${MINUTES:-5}
BENCH_ONLY=${BENCH_ONLY:-}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } | tee "$OUT/machine.txt"

python3 -m deltaedit bench --device "$DEVICE" ${BENCH_ONLY:+--only $BENCH_ONLY} 2>&1 | tee "$OUT/bench.txt"

# The toy D stage needs the shipped GAN weights beside it; its own weights come back in $OUT.
toy="$WORK/toy"
mkdir -p "$toy"
cp -n assets/toy/*.safetensors assets/toy/*.npy assets/toy/*.json "$toy"/
python3 -m deltaedit toy train --budget "$BUDGET" --device "$DEVICE" --stages diffusion --out "$toy" \
    --time-limit "$MINUTES" 2>&1 | tail -n 30 | tee "$OUT/train.txt"
status=${PIPESTATUS[0]}
if [ "$status" -eq 75 ]; then
    echo "paused at a checkpoint in $toy/.diffusion-run: run this script again to continue" | tee -a "$OUT/train.txt"
    exit 75
elif [ "$status" -ne 0 ]; then
    exit "$status"
fi
cp "$toy/train_log.json" "$OUT/train_log.json"
cp "$toy/diffusion/diffusion_pytorch_model.safetensors" "$OUT/diffusion_pytorch_model.safetensors"
cp "$toy/diffusion/config.json" "$OUT/diffusion_config.json"
python3 -m deltaedit eval --domain toy --backbone diffusion --n 50 --seed 1000 --steps 50 --weights-dir "$toy" --device "$DEVICE" \
    2>&1 | tail -n 8 | tee "$OUT/eval.txt"
