#!/usr/bin/env bash
# Next MFU candidates on one GPU (SD3-medium, bf16, kernels cast once, cuBLAS GEMMs: mmdit_jax.runtime), after
# gpu_suite.sh. Session 5's profile (RESULTS.md, "GPU session 5") left ~17 ms of a 160 ms step in ~1,300 memcpy
# kernels per step, most likely slicing each block's parameters out of the scan's stacks, but could not name the HLO op
# behind each kernel (CUDA graphs hide it). Tried here, each in its own process:
#   1. a profile with command buffers off (kernels named by HLO op; trace.json.gz back in $OUT),
#   2. --xla_gpu_enable_dynamic_slice_fusion=true (GEMMs read the slice in place instead of a copy),
#   3. the unrolled 24 blocks (no slices at all; session 3 saw its compile pass 100 s), under a 200 s limit,
#   4. batch 16 with the better of 1-2.
# One call of the device tool (about 7 minutes); carry .whl as gpu_common.sh says. Not yet run on a GPU.
# Smoke-test on a CPU: PRESET=tiny SIZE=8 TOKENS=8 BATCH=2 bash experiments/benchmarks/gpu_mfu_variants.sh
OUT=${OUT:-runs/gpu_mfu_variants}; mkdir -p "$OUT"
source experiments/benchmarks/gpu_common.sh  # wheels, shapes, step()
SHOW="^\| (train step|\*\*MFU)|^Train step|rror"; TAIL=6
SHAPE=(--preset "$PRESET" --size "$SIZE" --tokens "$TOKENS" --dtype bfloat16)
XLA_FLAGS=--xla_gpu_enable_command_buffer= step profile_no_graphs 90 $PY $B/profile_step.py "${SHAPE[@]}" \
  --scan_blocks --batch "$BATCH" --trace_dir "$OUT/trace" --top 40
cp "$(ls -t "$OUT"/trace/plugins/profile/*/perfetto_trace.json.gz | head -1)" "$OUT/trace.json.gz"; rm -rf "$OUT/trace"
grep -A 10 "^| kind" "$OUT/logs.txt"
DSF=--xla_gpu_enable_dynamic_slice_fusion=true
XLA_FLAGS=$DSF step dynamic_slice_fusion 60 $PY $B/mfu.py "${SHAPE[@]}" --scan_blocks --batch "$BATCH"
step baseline 50 $PY $B/mfu.py "${SHAPE[@]}" --scan_blocks --batch "$BATCH"
step unrolled 200 $PY $B/mfu.py "${SHAPE[@]}" --batch "$BATCH"
XLA_FLAGS=$DSF step dynamic_slice_fusion_b16 60 $PY $B/mfu.py "${SHAPE[@]}" --scan_blocks --batch $((2 * BATCH))
