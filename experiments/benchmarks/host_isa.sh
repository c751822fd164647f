#!/usr/bin/env bash
# Host dependence of the JAX-vs-diffusers CPU comparison: emulate a host without AVX-512 on this one.
#
# For each condition: both libraries' fp32 matmul peaks (sd3_pipeline.py --peaks_only), then the small-preset
# MMDiT forward / train step against diffusers eager (mmdit_step.py), its table written to $OUT/<condition>.md
# (not to RESULTS.md; the summary there is written by hand from these files).
#
# Conditions (ISA caps are environment variables read at library load):
#   base       nothing restricted
#   avx2       XLA:CPU codegen capped at AVX2 (--xla_cpu_max_isa=AVX2) and torch too (ATen kernels,
#              oneDNN, MKL: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
#   xla_avx2   only XLA capped (torch unrestricted)
#   torch_avx2 only torch capped
#   xla_eigen  XLA's dots and convolutions through its own Eigen runtime instead of YNNPACK
#              (--xla_cpu_experimental_ynn_fusion_type=reduce overwrites the default list, which holds dot);
#              torch unrestricted. --xla_cpu_max_isa caps only XLA's LLVM codegen: YNNPACK picks its kernels at
#              run time from cpuid, so on this jaxlib (0.10.2) the AVX2 cap leaves the GEMMs on AVX-512.
#   xla_eigen_avx2  xla_eigen + --xla_cpu_max_isa=AVX2, torch capped as in avx2: the nearest this host gets to
#              "no AVX-512 anywhere"
#   extra      unrestricted torch, XLA with $EXTRA_XLA_FLAGS (e.g. a oneDNN / XNNPACK flag) [+ AVX2 if EXTRA_AVX2=1]
#
# Usage: experiments/benchmarks/host_isa.sh [OUT_DIR] [conditions...]   (default: /tmp/host_isa base avx2 xla_avx2)
#        PAIRS=3 REPEATS=3 (mmdit_step.py's A/B pairs and repeats; ~1.5-3 min per condition on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/host_isa}
shift || true
CONDITIONS=("$@")
[ ${#CONDITIONS[@]} -eq 0 ] && CONDITIONS=(base avx2 xla_avx2)
PAIRS=${PAIRS:-3}
REPEATS=${REPEATS:-3}
mkdir -p "$OUT"
TORCH_AVX2=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)

for cond in "${CONDITIONS[@]}"; do
  case $cond in
    base)       envs=() ;;
    avx2)       envs=(XLA_FLAGS=--xla_cpu_max_isa=AVX2 "${TORCH_AVX2[@]}") ;;
    xla_avx2)   envs=(XLA_FLAGS=--xla_cpu_max_isa=AVX2) ;;
    torch_avx2) envs=("${TORCH_AVX2[@]}") ;;
    xla_eigen)  envs=(XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=reduce) ;;
    xla_eigen_avx2) envs=("XLA_FLAGS=--xla_cpu_max_isa=AVX2 --xla_cpu_experimental_ynn_fusion_type=reduce"
                          "${TORCH_AVX2[@]}") ;;
    extra)      flags="${EXTRA_XLA_FLAGS:-}"
                [ "${EXTRA_AVX2:-0}" = 1 ] && flags="--xla_cpu_max_isa=AVX2 $flags"
                envs=("XLA_FLAGS=$flags") ;;
    *) echo "unknown condition $cond" >&2; exit 2 ;;
  esac
  echo "=== $cond: ${envs[*]:-} (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/log.txt"
  env "${envs[@]}" python experiments/benchmarks/sd3_pipeline.py --peaks_only 2>&1 | grep PEAKS | tee -a "$OUT/log.txt"
  env "${envs[@]}" python experiments/benchmarks/mmdit_step.py --pairs "$PAIRS" --repeats "$REPEATS" \
      --results "$OUT/$cond.md" 2>&1 | grep -E '^\| (forward|train)|matmul peak' | tee -a "$OUT/log.txt"
  echo "    load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log.txt"
done
