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

if [ "$SMOKE" = 1 ]; then
    export LABKIT_MODE=smoke
    if [ "$PHASE" = all ] || [ "$PHASE" = probe ]; then
        step tests 300 $PY -m pytest -q -p no:cacheprovider tests/test_core.py tests/test_lognorm.py tests/test_snode.py \
            -k "device or cuda"
        step bench_convex 300 $PY scripts/bench_convex.py --device "$DEVICE" --preset mnist --batch 8 --steps 1 \
            --json "$OUT/bench_convex_$DEVICE.json" --variants cudnn-benchmark tf32 channels-last bf16 fused-adam combined
        step bench_snode 300 $PY scripts/bench_snode.py --device "$DEVICE" --dim 16 --steps 5 --batch 20 --images 40 \
            --json "$OUT/bench_snode_$DEVICE.json" --ensemble 3
        step bench_ncg 300 $PY scripts/bench_ncg_overhead.py --device "$DEVICE" --steps 20 --iterations 6 \
            --json "$OUT/bench_ncg_overhead_$DEVICE.json"
        step bench_structured 300 $PY scripts/bench_structured.py --device "$DEVICE" --sizes book --batch 8 --steps 1 \
            --json "$OUT/bench_structured_$DEVICE.json"
    fi
    [ "$PHASE" = all ] && step full_ch02 120 $PY -m labkit.experiment ch02 --help
    [ "$PHASE" = cifar ] && step full_ch05 300 $PY -m labkit.experiment ch05 --out "$OUT/ch05_full.json" \
        --set n_train=200 --set n_test=100 --set 'widths=[4, 8, 8]' --set layers=2 --set epochs=1 \
        --set require_full_cifar=false --set n_attack=20 --set strong_steps=3 --set n_audit=2 --set sir_steps=5 \
        --set 'presets=["switching", "certified"]' --set min_checked=1
    [ "$PHASE" = cpls ] && step full_ch04 300 $PY -m labkit.experiment ch04 --out "$OUT/ch04_cifar.json" \
        --set 'datasets=[]' --set cifar_preset=cifar --set cifar_train=100 --set cifar_test=50 --set cifar_epochs=1 \
        --set require_full_cifar=false --set n_attack=20 --set n_lower=4 --set lower_steps=5 --set n_audit=2 \
        --set audit_steps=5 --set 'cifar_speedups=["channels-last", "bf16"]'
    [ "$PHASE" = wide ] && step full_ch01 300 $PY -m labkit.experiment ch01 --out "$OUT/ch01_wide.json" \
        --set width=6 --set n_train=200 --set n_test=50 --set epochs=1 --set pgd_steps=3 --set n_audit=20 \
        --set 'targets=[null, 0.2]' --set 'datasets=["mnist"]'
    [ "$PHASE" = snode ] && step full_ch03 300 $PY -m labkit.experiment ch03 --mode smoke --out "$OUT/ch03_full.json" \
        --set 'seeds=[0, 1]'
    [ "$PHASE" = bench ] && step bench 300 $PY -m labkit.bench --mode smoke --methods plain cpl \
        --datasets $BENCH_DATASETS --results "$OUT/bench_full"
else
    # one call may last 10 minutes: the limits of a phase add up to at most 9
    if [ "$PHASE" = all ]; then
        step tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_core.py tests/test_lognorm.py \
            tests/test_chapters.py tests/test_reliability.py tests/test_snode.py tests/test_structured.py
        step bench_convex 60 $PY scripts/bench_convex.py --device "$DEVICE" --json "$OUT/bench_convex_$DEVICE.json"
        step bench_snode 60 $PY scripts/bench_snode.py --device "$DEVICE" --json "$OUT/bench_snode_$DEVICE.json"
    fi
    if [ "$PHASE" = probe ]; then  # what is new since the last GPU run
        step tests 90 $PY -m pytest -q -p no:cacheprovider tests/test_structured.py tests/test_experiment.py tests/test_convex.py \
            tests/test_snode.py
        # Chapter 3's NCG without per-step overhead: the batched iteration as CUDA graphs, one network and
        # an ensemble of 9 (goals: 2 000 images/s per network, 10 000 in all), and the overhead side by side
        step bench_snode 90 $PY scripts/bench_snode.py --device "$DEVICE" --json "$OUT/bench_snode_$DEVICE.json" \
            --ensemble 9
        step bench_ncg 30 $PY scripts/bench_ncg_overhead.py --device "$DEVICE" --json "$OUT/bench_ncg_overhead_$DEVICE.json"
        # Chapter 4's epoch goal (at most 7 s): the plain CPL-S step and its variants, one row each
        step bench_convex 180 $PY scripts/bench_convex.py --device "$DEVICE" --json "$OUT/bench_convex_$DEVICE.json" \
            --variants cudnn-benchmark tf32 channels-last bf16 fused-adam combined
    fi
    if [ "$PHASE" = all ] || [ "$PHASE" = probe ]; then
        step bench_structured 60 $PY scripts/bench_structured.py --device "$DEVICE" \
            --json "$OUT/bench_structured_$DEVICE.json"
    fi
    # Chapter 2 on all of MNIST: resumable run by run; what the limit stops comes back as a partial record
    [ "$PHASE" = all ] && step full_ch02 270 $PY -m labkit.experiment ch02 --out "$OUT/ch02_full.json"
    # Chapter 5 on the full CIFAR-10: the paper's network, a shortened schedule (stated in the record).
    # The paper's regimes first, the certified network last: at paper size its exact orthogonal and
    # sound-norm projections cost 2.7 s per step on the H200 with batched SVDs (bench_structured_cuda.json;
    # Gram iteration on the device replaces them since, not yet timed there),
    # so a limit that stops the run keeps the others (a run that put it first got none)
    [ "$PHASE" = cifar ] && step full_ch05 "${CH05_LIMIT:-420}" $PY -m labkit.experiment ch05 \
        --out "$OUT/ch05_full.json" --set epochs="${CH05_EPOCHS:-6}" --set decay_every="${CH05_DECAY:-4}" \
        --set strong_steps=50 --set strong_restarts=2 --set n_audit=32 --set audit_steps=30 \
        --set 'presets=["switching", "resnet", "flexible", "nonexpansive", "naive", "certified"]'
    # CPL-S (Chapter 4) on the full CIFAR-10: the authors' recipe with the triangular schedule over
    # CPLS_EPOCHS epochs instead of 200 (the record keeps the sizes), certified and PGD accuracy
    # CPLS_SPEEDUPS: the variants of the training step that the probe found fastest (a JSON list of
    # convex.SPEEDUPS, e.g. '["channels-last", "bf16"]'); the record keeps them with its sizes
    [ "$PHASE" = cpls ] && step full_ch04 "${CPLS_LIMIT:-540}" $PY -m labkit.experiment ch04 \
        --out "$OUT/ch04_cifar.json" --set 'datasets=[]' --set cifar_epochs="${CPLS_EPOCHS:-20}" \
        --set "cifar_speedups=${CPLS_SPEEDUPS:-[]}"
    # Chapter 1 at a width the 2-core CPU could not reach (its record stops at 16): every run is
    # kept as it ends, so a limit that stops the phase leaves a partial record to resume from
    [ "$PHASE" = wide ] && step full_ch01 "${WIDE_LIMIT:-540}" $PY -m labkit.experiment ch01 \
        --out "$OUT/ch01_wide.json" --set width="${WIDE_WIDTH:-20}"
    # Chapter 3's full record, three seeds: the NCG trainings of all seeds and both gradients train
    # together on the device, then the Adam analogues one by one; each finished run is kept
    [ "$PHASE" = snode ] && step full_ch03 "${SNODE_LIMIT:-540}" $PY -m labkit.experiment ch03 \
        --out "$OUT/ch03_full.json"
fi
# Chapter 6's full grid: one record per run, written as each run ends, so a limit loses at most one run
if [ "$PHASE" = bench ] && [ "$SMOKE" = 0 ]; then
    mkdir -p "$OUT/bench_full" && cp .device-data/bench_full/*.json "$OUT/bench_full/" 2>/dev/null
    step bench "${BENCH_LIMIT:-540}" $PY -m labkit.bench --mode full --datasets $BENCH_DATASETS \
        --shard "${BENCH_SHARD:-1/1}" --results "$OUT/bench_full"
fi
[ "$PHASE" = bench ] && tar czf "$OUT/bench_full.tgz" -C "$OUT" bench_full && rm -rf "$OUT/bench_full"
ls -l "$OUT" >> "$LOG"
if [ -n "$FAILED" ]; then
    echo "failed:$FAILED" | tee -a "$OUT/summary.txt"
    exit 1
fi
