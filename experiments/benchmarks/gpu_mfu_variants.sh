#!/usr/bin/env bash
# MFU candidates on one GPU (SD3-medium, bf16, kernels cast once, cuBLAS GEMMs: mmdit_jax.runtime), after
# gpu_suite.sh, for a card on which the batch-8 step fits only with every block rematerialised (`--remat`, policy
# `full`; RESULTS.md has the measurements). Under remat, MFU grows with the batch. `full` recomputes every block's
# forward matmuls in the backward; the `minimal` policy keeps the projections' outputs (models/mmdit.py
# REMAT_POLICIES: more memory per example) and recomputes only element-wise work and attention. Each step times
# the trainer's own train step (make_train_step, via mfu.py / profile_step.py), each in its own process:
#   1. policy full at batch $BIG (32): the reference on this machine,
#   2. policy minimal at batches 8, 16, $BIG and 64 (an out-of-memory step says so and the script goes on),
#   3. a profile at batch 8 under minimal with command buffers off (kernels named by HLO op; trace.json.gz in $OUT),
#   4. with UNROLLED=1 only: the unrolled 24 blocks at batch 8 under full (a long compile: its own limit).
# One call of the device tool (at most ~7 minutes; ~10 with UNROLLED=1); carry .whl as gpu_common.sh says.
# Smoke-test on a CPU: RESULTS=/tmp/results.md PRESET=tiny SIZE=8 TOKENS=8 BATCH=2 BIG=4 bash experiments/benchmarks/gpu_mfu_variants.sh
OUT=${OUT:-runs/gpu_mfu_variants}; mkdir -p "$OUT"
source experiments/benchmarks/gpu_common.sh  # wheels, shapes, step()
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
SHOW="^\| (train step|device memory|\*\*MFU)|^Train step|rror"; TAIL=6; BIG=${BIG:-32}
SHAPES=(--preset "$PRESET" --size "$SIZE" --tokens "$TOKENS" --dtype bfloat16)
SHAPE=("${SHAPES[@]}" --scan_blocks)
mfu() { local name=$1 limit=$2; shift 2; step "$name" "$limit" $PY $B/mfu.py "${SHAPE[@]}" --results "$RESULTS" "$@"; }
mfu full_b$BIG 70 --remat --batch "$BIG"
for b in "$BATCH" $((2 * BATCH)) "$BIG" 64; do
  mfu minimal_b$b 80 --remat --remat_policy minimal --batch "$b"
done
XLA_FLAGS=--xla_gpu_enable_command_buffer= step profile_no_graphs 90 $PY $B/profile_step.py "${SHAPE[@]}" \
  --results "$RESULTS" --remat --remat_policy minimal --batch "$BATCH" --trace_dir "$OUT/trace" --top 40
trace=$(ls -t "$OUT"/trace/plugins/profile/*/perfetto_trace.json.gz 2> /dev/null | head -1)
[ -n "$trace" ] && cp "$trace" "$OUT/trace.json.gz"; rm -rf "$OUT/trace"
grep -A 10 "^| kind" "$OUT/logs.txt"
[ "${UNROLLED:-0}" = 1 ] || exit 0
SHAPE=("${SHAPES[@]}")  # unrolled: no --scan_blocks
mfu unrolled 200 --remat --batch "$BATCH"
