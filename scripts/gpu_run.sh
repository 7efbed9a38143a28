#!/usr/bin/env bash
# Runs on the GPU machine, each phase in one call (../shared/notes/gpu.md):
#   all    the CUDA cases of the tests, the GPU benchmarks (Chapter 4's CPL-S training step,
#          Chapter 3's NCG epoch and adjoint, Chapter 5's networks) and Chapter 2 in full mode;
#   probe  the CUDA cases of the tests and the benchmarks only (while CIFAR-10 parts travel), with
#          the variants of Chapter 4's CPL-S training step (scripts/bench_convex.py --variants) and
#          Chapter 3's NCG as CUDA graphs, alone and as an ensemble of 9 (bench_snode.py --ensemble,
#          bench_ncg_overhead.py);
#   parts  nothing but a check of which CIFAR-10 parts have arrived (a call that carries one);
#   cifar  Chapter 5's experiment on the full CIFAR-10 with a shortened schedule (the sizes set
#          below are kept in the record);
#   cpls   Chapter 4's CPL-S on the full CIFAR-10 with the authors' recipe shortened to
#          CPLS_EPOCHS epochs (default 20, stated in the record), nothing else;
#   wide   Chapter 1's experiment at full size at width WIDE_WIDTH (default 20; the CPU's record
#          stops at 16), resumable run by run;
#   snode  Chapter 3's full record with its three seeds: the six NCG trainings as one ensemble
#          (snode.ncg_train_ensemble, CUDA graphs), then the Adam analogues, resumable run by run;
#   bench  Chapter 6's full grid on BENCH_DATASETS (default the MNIST-like sets; with cifar10 the
#          CIFAR-10 parts must have arrived), BENCH_SHARD=i/n picks a part, resumable: the records
#          of an earlier call, unpacked into .device-data/bench_full and carried, are skipped; the
#          folder comes back as $OUT/bench_full.tgz. (The records in book/data/bench_full ran with
#          other sizes and are not mixed in: the command refuses records of other sizes.)
# Full-mode steps run under a time limit and are resumable: a partial record comes back when the
# limit stops a run, and a partial record of an earlier call put in .device-data/resume (carried)
# is copied into $OUT first, so that the same phase goes on from it.
#
#   OUT=/path bash scripts/gpu_run.sh [PHASE]        # on the GPU machine ($OUT is the device tool's)
#   OUT=/tmp/gpu-smoke bash scripts/gpu_run.sh --smoke [PHASE]   # here, on the CPU: the same steps, tiny
#
# Data: `python scripts/gpu_prepare.py pack [--cifar]` first, and carry `.device-data` (or one
# CIFAR-10 part per call) with the run. Every step runs even if an earlier one failed;
# $OUT/summary.txt says how each ended, and the logs of all steps are in $OUT/gpu_run.log (few
# files: at most 8 come back). The script exits 1 when a step failed (a step stopped by its time
# limit, exit 124, is not a failure: it leaves a partial record to resume from).
set -uo pipefail

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1 && shift
PHASE=${1:-all}
case "$PHASE" in all|probe|parts|cifar|cpls|wide|snode|bench) ;; *) echo "unknown phase $PHASE (all, probe, parts, cifar, cpls, wide, snode, bench)" >&2; exit 2;; esac
BENCH_DATASETS=${BENCH_DATASETS:-mnist fashion_mnist}
BENCH_JSON="[$(printf '"%s",' $BENCH_DATASETS | sed 's/,$//')]"  # the same list as JSON, for --set
CIFAR=0
case "$PHASE" in cifar|cpls) CIFAR=1;; bench) case " $BENCH_DATASETS " in *" cifar10 "*) CIFAR=1;; esac;; esac
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD LABKIT_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
LOG="$OUT/gpu_run.log"
: > "$OUT/summary.txt"
cp .device-data/resume/*.partial.json "$OUT/" 2>/dev/null

FAILED=""
step() {  # step NAME LIMIT_S COMMAND...: run, log, and record the status and the time
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "=== $name: $*" >> "$LOG"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
    # a step stopped by its limit (124) has left a partial record to resume from; any other
    # non-zero status is a failure, and the script's own status says so at the end
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then FAILED="$FAILED $name"; fi
}

DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
# The independent attack library of the audits (ART) and its dependencies travel as wheels in
# .device-data/wheels (pip download --no-deps …); they are installed beside the tree, not into it.
if ! $PY -c "import art" 2>/dev/null && ls .device-data/wheels/*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-index --no-deps --target /tmp/device-site .device-data/wheels/*.whl >> "$LOG" 2>&1
    export PYTHONPATH=$PYTHONPATH:/tmp/device-site
fi
if [ "$PHASE" = parts ]; then
    ls -l .device-data/cifar-parts 2>&1 | tee -a "$OUT/summary.txt"
    exit 0
fi
if [ "$CIFAR" = 1 ]; then
    export LABKIT_DATA=$($PY scripts/gpu_prepare.py unpack) || { echo "unpack failed" | tee -a "$OUT/summary.txt"; exit 1; }
elif [ -f .device-data/MNIST/raw/train-images-idx3-ubyte.gz ]; then
    export LABKIT_DATA=$PWD/.device-data
fi
$PY - >> "$OUT/summary.txt" <<'EOF'
import platform, torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine()
print(f"device: {name}; torch {torch.__version__}; python {platform.python_version()}")
EOF
echo "data: ${LABKIT_DATA:-the bundled samples}; phase $PHASE" >> "$OUT/summary.txt"

# Each phase once. In --smoke mode every chapter runs at its smoke sizes (--mode smoke) and every
# benchmark at the tiny sizes of SMALL, each step within 300 s; otherwise within the limits below
# (a call may last 10 minutes: the limits of a phase add up to at most 9).
if [ "$SMOKE" = 1 ]; then
    export LABKIT_MODE=smoke
    MODE=smoke
    TESTS=(tests/test_core.py tests/test_lognorm.py tests/test_snode.py -k "device or cuda")
else
    MODE=full
    TESTS=(tests/test_core.py tests/test_lognorm.py tests/test_chapters.py tests/test_reliability.py
           tests/test_snode.py tests/test_structured.py tests/test_experiment.py tests/test_convex.py)
fi
limit() { [ "$SMOKE" = 1 ] && echo 300 || echo "$1"; }
small() { [ "$SMOKE" = 1 ] && echo "$@"; }  # the arguments, in --smoke mode only
chapter() {  # chapter NAME LIMIT ARGS...: python -m labkit.chapters NAME at this mode's sizes, resumable
    local name=$1 seconds=$2
    shift 2
    step "full_$name" "$(limit "$seconds")" $PY -m labkit.chapters "$name" --mode "$MODE" "$@"
}
bench() {  # bench NAME LIMIT ARGS...: scripts/bench_NAME.py on this device, its record in $OUT
    local name=$1 seconds=$2
    shift 2
    step "bench_$name" "$(limit "$seconds")" $PY "scripts/bench_$name.py" --device "$DEVICE" \
        --json "$OUT/bench_${name}_$DEVICE.json" "$@"
}

case "$PHASE" in
all)  # the tests, the benchmarks, and Chapter 2 on all of MNIST (a limit leaves a partial record)
    step tests "$(limit 150)" $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
    bench convex 60 $(small --preset mnist --batch 8 --steps 1)
    bench snode 60 $(small --dim 16 --steps 5 --batch 20 --images 40)
    bench structured 60 $(small --sizes book --batch 8 --steps 1)
    chapter ch02 210 --out "$OUT/ch02_full.json"
    ;;
probe)  # what is new since the last GPU run: Chapter 3's NCG as CUDA graphs, one network and an
        # ensemble of 9 (goals: 2 000 images/s per network, 10 000 in all), its overhead side by
        # side, and Chapter 4's epoch goal (at most 7 s): the CPL-S step and its variants
    step tests "$(limit 150)" $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
    bench snode 90 --ensemble "$([ "$SMOKE" = 1 ] && echo 3 || echo 9)" $(small --dim 16 --steps 5 --batch 20 --images 40)
    bench ncg_overhead 30 $(small --steps 20 --iterations 6)
    bench convex 180 --variants cudnn-benchmark tf32 channels-last bf16 fused-adam combined \
        $(small --preset mnist --batch 8 --steps 1)
    bench structured 60 $(small --sizes book --batch 8 --steps 1)
    ;;
cifar)  # Chapter 5 on the full CIFAR-10, a shortened schedule (kept in the record); the certified
        # network last, since at paper size its projections are the slowest step
    chapter ch05 "${CH05_LIMIT:-420}" --out "$OUT/ch05_full.json" --set epochs="${CH05_EPOCHS:-6}" \
        --set decay_every="${CH05_DECAY:-4}" --set strong_steps=50 --set strong_restarts=2 --set n_audit=32 \
        --set audit_steps=30 --set 'presets=["switching", "resnet", "flexible", "nonexpansive", "naive", "certified"]'
    ;;
cpls)  # CPL-S (Chapter 4) on the full CIFAR-10, the authors' recipe over CPLS_EPOCHS epochs, with
       # the training step's variants CPLS_SPEEDUPS (a JSON list of convex.SPEEDUPS)
    chapter ch04 "${CPLS_LIMIT:-540}" --out "$OUT/ch04_cifar.json" --set 'datasets=[]' \
        --set cifar_epochs="${CPLS_EPOCHS:-20}" --set "cifar_speedups=${CPLS_SPEEDUPS:-[]}"
    ;;
wide)  # Chapter 1 at a width the 2-core CPU's record does not reach (it stops at 16)
    chapter ch01 "${WIDE_LIMIT:-540}" --out "$OUT/ch01_wide.json" --set width="${WIDE_WIDTH:-20}"
    ;;
snode)  # Chapter 3's full record: the NCG trainings of every seed together, then the Adam analogues
    chapter ch03 "${SNODE_LIMIT:-540}" --out "$OUT/ch03_full.json"
    ;;
bench)  # Chapter 6's grid, one record per run as it ends: a limit loses at most one run
    mkdir -p "$OUT/bench_full" && cp .device-data/bench_full/*.json "$OUT/bench_full/" 2>/dev/null
    few=()  # in --smoke mode two methods only
    [ "$SMOKE" = 1 ] && few=(--set 'methods=["plain", "cpl"]')
    chapter ch06 "${BENCH_LIMIT:-540}" --set "datasets=$BENCH_JSON" --shard "${BENCH_SHARD:-1/1}" \
        --out "$OUT/bench_full" "${few[@]}"
    tar czf "$OUT/bench_full.tgz" -C "$OUT" bench_full && rm -rf "$OUT/bench_full"
    ;;
esac
ls -l "$OUT" >> "$LOG"
if [ -n "$FAILED" ]; then
    echo "failed:$FAILED" | tee -a "$OUT/summary.txt"
    exit 1
fi
