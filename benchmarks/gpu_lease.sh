#!/usr/bin/env bash
# One call on a lent GPU (the `device` tool's machine), from the repository root:
#
#     bash benchmarks/gpu_lease.sh          # OUT=folder for the results (the tool sets it)
#
# Phase A, at once: the test suite's triton tests (the whole backend grid plus
# tests/test_triton.py, float64 reference, tolerance rule) with fixed 32x32 blocks, and
# `gpu.py --plan lease --prewarm 9`, which compiles every kernel and block shape the timed run
# will try into Triton's and inductor's on-disk caches. Phase B, alone on the GPU:
# `gpu.py --plan lease` (its float64 checks with autotuned blocks, then the timings).
# Everything lands in $OUT as it goes; a phase cut off by its limit still leaves its log.
# Limits (seconds): PHASE_A (default 200), PHASE_B (default 300). Sized for a 15-minute lease:
# ~9 minutes for this call, leaving time for one shorter rerun after a fix. (The first run,
# 2026-11-29, had 150 s for phase A: the tests took 138 s, the prewarm did not finish.)
set -u
OUT=${OUT:-/tmp/attend-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/tests" \
    TRITON_CACHE_DIR="$PWD/.triton-cache" TORCHINDUCTOR_CACHE_DIR="$PWD/.inductor-cache"
PY=${PY:-python3}
PHASE_A=${PHASE_A:-200}
PHASE_B=${PHASE_B:-300}
t0=$(date +%s)
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    $PY -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"
    $PY -c "import attend; print('attend imports')"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
grep -q "attend imports" "$OUT/environment.txt" || { echo "attend does not import here: stopping"; exit 1; }

echo "phase A: tests (fixed 32x32 blocks) and prewarm, at once"
( ATTEND_TEST_TRITON_BLOCKS=32x32 OMP_NUM_THREADS=2 timeout "$PHASE_A" \
    $PY -m pytest tests/test_triton.py tests -k triton -n 6 -v -p no:cacheprovider -o addopts="" -rfE \
    > "$OUT/tests.log" 2>&1
  echo "exit $?" >> "$OUT/tests.log" ) &
timeout "$PHASE_A" $PY benchmarks/gpu.py --plan lease --prewarm 9 > "$OUT/prewarm.log" 2>&1
echo "prewarm exit $?" >> "$OUT/prewarm.log"
wait
pkill -f -- "gpu.py .*--worker" 2>/dev/null; pkill -f "pytest tests/test_triton.py" 2>/dev/null  # what a limit left running
tail -3 "$OUT/prewarm.log"
echo "tests: $(grep -c ' PASSED ' "$OUT/tests.log") passed, $(grep -c -E ' (FAILED|ERROR) ' "$OUT/tests.log") failed"
grep -E "^(FAILED|ERROR) |exit" "$OUT/tests.log" | tail -25
echo "phase A: $(( $(date +%s) - t0 )) s"

echo "phase B: checks and timings (gpu.py --plan lease)"
mkdir -p .gpu-results
timeout "$PHASE_B" $PY benchmarks/gpu.py --plan lease --budget "$((PHASE_B - 20))" --out .gpu-results \
    > "$OUT/gpu.log" 2>&1
echo "gpu.py exit $?" >> "$OUT/gpu.log"
cp .gpu-results/gpu-*.md .gpu-results/gpu-*.json "$OUT/" 2>/dev/null
grep -E "check FAILED|checks:|Error|exit" "$OUT/gpu.log" | tail -20
echo "total: $(( $(date +%s) - t0 )) s"
