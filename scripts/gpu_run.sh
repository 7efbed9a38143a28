#!/usr/bin/env bash
# One run on the GPU machine, everything in one go (../shared/notes/gpu.md):
#   1. the CUDA cases of the tests;
#   2. the GPU benchmarks (Chapter 4's CPL-S training step, Chapter 3's NCG epoch and adjoint);
#   3. the full-mode records that fit, each under a time limit, resumable (a partial record comes
#      back when the limit stops a run).
#
#   OUT=/path bash scripts/gpu_run.sh          # on the GPU machine ($OUT is the device tool's)
#   OUT=/tmp/gpu-smoke bash scripts/gpu_run.sh --smoke   # here, on the CPU: the same steps, tiny
#
# Data: `python scripts/gpu_prepare.py pack` first, and carry `.device-data` with the run.
# Every step runs even if an earlier one failed; $OUT/summary.txt says how each ended, and the
# logs of all steps are in $OUT/gpu_run.log (few files: at most 8 come back).
set -uo pipefail

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD LABKIT_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
LOG="$OUT/gpu_run.log"
: > "$OUT/summary.txt"

step() {  # step NAME LIMIT_S COMMAND...: run, log, and record the status and the time
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "=== $name: $*" >> "$LOG"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}

DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
export LABKIT_DATA=$($PY scripts/gpu_prepare.py unpack)
$PY - >> "$OUT/summary.txt" <<'EOF'
import platform, torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine()
print(f"device: {name}; torch {torch.__version__}; python {platform.python_version()}")
EOF
echo "data: $LABKIT_DATA" >> "$OUT/summary.txt"

if [ "$SMOKE" = 1 ]; then
    export LABKIT_MODE=smoke
    step tests 300 $PY -m pytest -q -p no:cacheprovider tests/test_core.py tests/test_lognorm.py -k "device or cuda"
    step bench_convex 300 $PY scripts/bench_convex.py --device "$DEVICE" --preset mnist --batch 8 --steps 1 \
        --json "$OUT/bench_convex_$DEVICE.json"
    step bench_snode 300 $PY scripts/bench_snode.py --device "$DEVICE" --dim 16 --steps 5 --batch 20 --images 40 \
        --json "$OUT/bench_snode_$DEVICE.json"
    step full_ch02 120 $PY -m labkit.experiment ch02 --help
else
    # one call may last 10 minutes: the limits below add up to 9
    step tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_core.py tests/test_lognorm.py \
        tests/test_chapters.py tests/test_reliability.py tests/test_snode.py
    step bench_convex 90 $PY scripts/bench_convex.py --device "$DEVICE" --json "$OUT/bench_convex_$DEVICE.json"
    step bench_snode 90 $PY scripts/bench_snode.py --device "$DEVICE" --json "$OUT/bench_snode_$DEVICE.json"
    # Chapter 2 on all of MNIST: resumable run by run; what the limit stops comes back as a partial record
    step full_ch02 270 $PY -m labkit.experiment ch02 --out "$OUT/ch02_full.json"
fi
ls -l "$OUT" >> "$LOG"
