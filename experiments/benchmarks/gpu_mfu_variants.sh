#!/usr/bin/env bash
# Next MFU candidates on one GPU (SD3-medium, bf16, kernels cast once, cuBLAS GEMMs: mmdit_jax.runtime), after
# gpu_suite.sh. Session 5's profile (RESULTS.md, "GPU session 5") left ~17 ms of a 160 ms step in ~1,300 memcpy
# kernels per step, most likely slicing each block's parameters out of the scan's stacks, but could not name the HLO op
# behind each kernel (CUDA graphs hide it). Each in its own process, the target's numbers first (the 50% target is
# for an H100, where no step has been measured yet):
#   1. the baseline at batch 8 and 2. with --xla_gpu_enable_dynamic_slice_fusion=true (GEMMs read the slice in place
#      instead of a copy),
#   3. batch 16 with and without it (blocks rematerialised if batch 16 does not fit, e.g. on an 80 GB H100),
#   4. a profile with command buffers off (kernels named by HLO op; trace.json.gz back in $OUT),
#   5. the unrolled 24 blocks (no slices at all; session 3 saw its compile pass 100 s), under a 200 s limit;
#      UNROLLED=0 leaves it out (then at most ~7.5 minutes).
# One call of the device tool (at most ~9 minutes); carry .whl as gpu_common.sh says.
# Smoke-test on a CPU: PRESET=tiny SIZE=8 TOKENS=8 BATCH=2 bash experiments/benchmarks/gpu_mfu_variants.sh
OUT=${OUT:-runs/gpu_mfu_variants}; mkdir -p "$OUT"
source experiments/benchmarks/gpu_common.sh  # wheels, shapes, step()
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
SHOW="^\| (train step|\*\*MFU)|^Train step|rror"; TAIL=6
SHAPES=(--preset "$PRESET" --size "$SIZE" --tokens "$TOKENS" --dtype bfloat16)
SHAPE=("${SHAPES[@]}" --scan_blocks)
DSF=--xla_gpu_enable_dynamic_slice_fusion=true
mfu() {  # NAME LIMIT ARGS...: mfu.py, rerun with --remat if the device ran out of memory
  local name=$1 limit=$2; shift 2
  step "$name" "$limit" $PY $B/mfu.py "${SHAPE[@]}" "$@"
  if [ "$OOM" = 1 ]; then step "${name}_remat" "$limit" $PY $B/mfu.py "${SHAPE[@]}" "$@" --remat; fi
}
mfu baseline 60 --batch "$BATCH"
XLA_FLAGS=$DSF mfu dynamic_slice_fusion 60 --batch "$BATCH"
mfu baseline_b16 60 --batch $((2 * BATCH))
XLA_FLAGS=$DSF mfu dynamic_slice_fusion_b16 60 --batch $((2 * BATCH))
XLA_FLAGS=--xla_gpu_enable_command_buffer= step profile_no_graphs 90 $PY $B/profile_step.py "${SHAPE[@]}" \
  --batch "$BATCH" --trace_dir "$OUT/trace" --top 40
cp "$(ls -t "$OUT"/trace/plugins/profile/*/perfetto_trace.json.gz | head -1)" "$OUT/trace.json.gz"; rm -rf "$OUT/trace"
grep -A 10 "^| kind" "$OUT/logs.txt"
[ "${UNROLLED:-1}" = 0 ] && exit 0
SHAPE=("${SHAPES[@]}")  # unrolled: no --scan_blocks
mfu unrolled 200 --batch "$BATCH"
