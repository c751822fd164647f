#!/usr/bin/env bash
# The benchmark suite on one GPU in bf16, at SD3-medium size (1024 image tokens = 64x64 latents with patch 2,
# 333 text tokens, batch 8), blocks under lax.scan (the unrolled 24-block train step compiles for minutes). The
# train step timed is the trainer's own (make_train_step). Most valuable first, each step under its own limit
# (under 10 minutes in all, one call of the device tool); logs, the trace, the optimised HLO and the updated
# ARCHIVE.md (the new raw entries, to fold into RESULTS.md) go to $OUT (default runs/gpu_suite).
# Smoke-test on a CPU with small sizes: RESULTS=/tmp/results.md PRESET=tiny SIZE=8 TOKENS=8 BATCH=2 bash experiments/benchmarks/gpu_suite.sh
OUT=${OUT:-runs/gpu_suite}; mkdir -p "$OUT"
source experiments/benchmarks/gpu_common.sh  # wheels (read it for .whl), shapes, step()
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, jax.devices())"
SD3=(--preset "$PRESET" --size "$SIZE" --tokens "$TOKENS" --dtype bfloat16 --scan_blocks --results "$RESULTS"); MEM=()
# 1. Where the step's time goes: MFU + a 2-step trace summarised (trace and optimised HLO kept in $OUT).
XLA_FLAGS="--xla_dump_to=$OUT/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=jit_step" \
  TAIL=50 step profile 100 $PY $B/profile_step.py "${SD3[@]}" --batch "$BATCH" --trace_dir "$OUT/trace"
if [ "$OOM" = 1 ]; then  # a card with less memory than an H200 (e.g. an 80 GB H100)
  MEM=(--remat); echo "out of memory: rerunning with blocks rematerialised (and the MFU steps below)"
  TAIL=50 step profile_remat 100 $PY $B/profile_step.py "${SD3[@]}" --remat --batch "$BATCH" --trace_dir "$OUT/trace"
fi
cp "$(ls -t "$OUT"/trace/plugins/profile/*/perfetto_trace.json.gz | head -1)" "$OUT/trace.json.gz"; rm -rf "$OUT/trace"
cp "$(ls -S "$OUT"/hlo/*jit_step*after_optimizations.txt | head -1)" "$OUT/step_after_optimizations.txt"
gzip -f "$OUT/step_after_optimizations.txt"; rm -rf "$OUT/hlo"  # files back from the device: 16 MiB each
# 2. Side by side with diffusers on CUDA, same weights, the same work per step (noising, velocity loss, clipped
#    AdamW, EMA); batch 4: both frameworks' batch-8 steps do not fit one card together.
step step_vs_diffusers 170 $PY $B/mmdit_step.py "${SD3[@]}" --batch "${SIDE_BATCH:-4}" --pairs 3 --repeats 3
# 3. The settings that move MFU, rechecked: Triton GEMM fusions back on (mmdit_jax.runtime turns them off), kernels
#    cast inside the scan (--no_cast), batch 16.
XLA_FLAGS=--xla_gpu_enable_triton_gemm=true step mfu_triton_gemm 60 $PY $B/mfu.py "${SD3[@]}" ${MEM[@]+"${MEM[@]}"} --batch "$BATCH"
step mfu_no_cast 60 $PY $B/mfu.py "${SD3[@]}" ${MEM[@]+"${MEM[@]}"} --batch "$BATCH" --no_cast
step mfu_batch16 60 $PY $B/mfu.py "${SD3[@]}" ${MEM[@]+"${MEM[@]}"} --batch 16
# 4. Text encoders after the weight-placement fix; the GPU attention paths against an fp32 oracle.
step text_encoding 50 $PY $B/text_encoding.py --batch 8 --dtype bfloat16 --results "$RESULTS"
step attention_checks 90 env JAX_PLATFORMS= $PY -m pytest -q -p no:cacheprovider tests/models/test_attention_gpu.py
