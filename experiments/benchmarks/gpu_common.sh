# Sourced by the GPU scripts (gpu_suite.sh, gpu_mfu_variants.sh): wheels, shapes, and `step NAME LIMIT CMD...`,
# which runs CMD under a time limit (and sets OOM=1 if the device ran out of memory), prints the lines matching
# $SHOW (default: all but XLA's log lines) from the end of its log, appends the log to $OUT/logs.txt and copies
# the results file to $OUT. (The device tool brings back at most 8 files from $OUT: one log file, not one per step.)
# The benchmarks append their raw entries to $RESULTS (default experiments/benchmarks/ARCHIVE.md, the run log;
# RESULTS.md is the summary written from it by hand; a CPU smoke test sets a scratch file, so that ARCHIVE.md holds
# measurements only).
#
# The lent GPU machines have jax, flax, optax, torch and transformers but not ml_collections or diffusers, and no
# network. Fetch their wheels here first (pure Python), carry the folder `.whl` with the call, and this installs
# them:  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#   ml_collections==1.1.0 diffusers==0.42.1 importlib_metadata==8.7.0
set -u
if [ -d .whl ] && command -v nvidia-smi > /dev/null; then  # only on the lent machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
PRESET=${PRESET:-sd3_medium}; SIZE=${SIZE:-64}; TOKENS=${TOKENS:-333}; BATCH=${BATCH:-8}; PY=${PY:-python3}
B=experiments/benchmarks; RESULTS=${RESULTS:-$B/ARCHIVE.md}
# JAX and PyTorch share the card in the side-by-side run: no up-front grab of 75% of its memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
step() {
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, $(date -u +%T))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"
  OOM=0; grep -q "RESOURCE_EXHAUSTED" "$OUT/$name.log" && OOM=1  # for callers that retry with --remat
  grep -v "^[WI][0-9]\{4\}" "$OUT/$name.log" | grep -E "${SHOW:-.}" | tail -n "${TAIL:-14}"
  [ -f "$RESULTS" ] && cp "$RESULTS" "$OUT/ARCHIVE.md"
  { echo "=== $name"; cat "$OUT/$name.log"; } >> "$OUT/logs.txt" && rm "$OUT/$name.log"
}
