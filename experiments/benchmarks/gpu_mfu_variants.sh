#!/usr/bin/env bash
# Follow-up to gpu_suite.sh on one GPU (SD3-medium, bf16, scanned blocks): the train-step MFU with kernels cast to
# bf16 once per step (mmdit_params.cast_kernels) against casting them inside the scan, each with and without
# Triton GEMM fusions, at batch 8 and 16; then the diffusers side-by-side at batch 4. One call of the device tool
# (about 6 minutes); carry .whl as gpu_suite.sh says. Smoke-test on a CPU: PRESET=tiny SIZE=8 TOKENS=8 BATCH=2 ...
set -u
if [ -d .whl ] && command -v nvidia-smi > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
OUT=${OUT:-runs/gpu_mfu_variants}; mkdir -p "$OUT"
PRESET=${PRESET:-sd3_medium}; SIZE=${SIZE:-64}; TOKENS=${TOKENS:-333}; BATCH=${BATCH:-8}; PY=${PY:-python3}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
step() {
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, $(date -u +%T))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"
  grep -E "^\| (train step|\*\*MFU)|^Train step|^\| (forward|train step) \||rror" "$OUT/$name.log" | tail -n "${TAIL:-6}"
  cp experiments/benchmarks/RESULTS.md "$OUT/RESULTS.md"
}
B=experiments/benchmarks
SD3=(--preset "$PRESET" --size "$SIZE" --tokens "$TOKENS" --dtype bfloat16 --scan_blocks)
NT=--xla_gpu_enable_triton_gemm=false
TAIL=20 step profile_cast 80 $PY $B/profile_step.py "${SD3[@]}" --batch "$BATCH" --trace_dir "$OUT/trace" --top 12
cp "$(ls -t "$OUT"/trace/plugins/profile/*/perfetto_trace.json.gz | head -1)" "$OUT/trace_cast.json.gz"; rm -rf "$OUT/trace"
grep -A 12 "^| kind" "$OUT/profile_cast.log"
XLA_FLAGS=$NT step cast_notriton 50 $PY $B/mfu.py "${SD3[@]}" --batch "$BATCH"
XLA_FLAGS=$NT step nocast_notriton 50 $PY $B/mfu.py "${SD3[@]}" --batch "$BATCH" --no_cast
step nocast_triton 50 $PY $B/mfu.py "${SD3[@]}" --batch "$BATCH" --no_cast
XLA_FLAGS=$NT step cast_notriton_b16 60 $PY $B/mfu.py "${SD3[@]}" --batch $((2 * BATCH))
step step_vs_diffusers 130 $PY $B/mmdit_step.py "${SD3[@]}" --batch "${SIDE_BATCH:-4}" --pairs 3 --repeats 3
