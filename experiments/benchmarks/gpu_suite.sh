#!/usr/bin/env bash
# The benchmark suite on one GPU in bf16, at SD3-medium size where the performance issue asks for it
# (1024 image tokens = 64x64 latents with patch 2, 333 text tokens, batch 8), blocks under lax.scan (the unrolled
# 24-block train step did not compile within 100 s on an H200). Most valuable first, each step under its own limit
# (under 10 minutes in all, one call of the device tool); logs and the updated RESULTS.md go to $OUT (default runs/gpu_suite).
# Smoke-test on a CPU with small sizes: PRESET=tiny SIZE=8 TOKENS=8 BATCH=2 bash experiments/benchmarks/gpu_suite.sh
#
# The lent GPU machines have jax, flax, optax, torch and transformers but not ml_collections or diffusers, and no
# network. Fetch their wheels here first (pure Python), carry the folder `.whl` with the call, and this script
# installs them:  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#   ml_collections==1.1.0 diffusers==0.42.1 importlib_metadata==8.7.0
set -u
if [ -d .whl ] && command -v nvidia-smi > /dev/null; then  # only on the lent machine
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
OUT=${OUT:-runs/gpu_suite}; mkdir -p "$OUT"
PRESET=${PRESET:-sd3_medium}; SIZE=${SIZE:-64}; TOKENS=${TOKENS:-333}; BATCH=${BATCH:-8}; PY=${PY:-python3}
# JAX and PyTorch share the card in the side-by-side run: no up-front grab of 75% of its memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
step() {
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s, $(date -u +%T))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?"
  grep -v "^[WI][0-9]\{4\}" "$OUT/$name.log" | tail -n 14
  cp experiments/benchmarks/RESULTS.md "$OUT/RESULTS.md"
}
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, jax.devices())"
B=experiments/benchmarks
step mfu 120 $PY $B/mfu.py --preset "$PRESET" --size "$SIZE" --tokens "$TOKENS" --batch "$BATCH" \
  --dtype bfloat16 --scan_blocks
step step_vs_diffusers 240 $PY $B/mmdit_step.py --preset "$PRESET" --size "$SIZE" --tokens "$TOKENS" --batch "$BATCH" \
  --dtype bfloat16 --pairs 3 --repeats 3 --scan_blocks
step sampler_overhead 60 $PY $B/mmdit_sampler_overhead.py --preset small --batch 8 --dtype bfloat16
step text_encoding 60 $PY $B/text_encoding.py --batch 8 --dtype bfloat16
step attention_checks 100 env JAX_PLATFORMS= $PY -m pytest -q -p no:cacheprovider tests/models/test_attention_gpu.py
