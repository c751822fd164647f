"""Process settings that make training faster, per platform; all must be made before the first JAX computation.

``configure_runtime()`` applies those of the platform JAX will compute on (decided without starting JAX).

On a CPU:

1. Keep freed host memory mapped (glibc ``mallopt``). XLA:CPU takes every execution's temporary buffer
   (hundreds of MB for a train step) from ``malloc`` on one of its worker threads. glibc serves a large request
   (over 64 MB) in a thread's own arena with a fresh ``mmap`` and unmaps it on ``free``, so without this every
   step faults the whole buffer in again, page by page, and spends a noticeable share of its time in the kernel.
   One arena, no ``mmap`` and no trimming keep the pages.
   Cost: the process keeps its peak heap (freed memory is reused, not returned to the OS).
2. XLA:CPU multi-output fusion. Without it the instruction fusion pass may duplicate producers into every
   consumer, and the backward pass's residual-stream gradient is recomputed from all later blocks inside
   each consumer (very large fusions): with it the train step has far fewer fused instructions, compiles
   faster and runs a little faster. Same operations, so the same maths.

On an NVIDIA GPU:

3. Every GEMM through cuBLAS (``--xla_gpu_enable_triton_gemm=false``): in the bf16 MMDiT train step, XLA's
   Triton GEMM fusions (a matmul with its neighbouring elementwise ops in one generated kernel) ran slower than
   cuBLAS plus a separate fusion. Left alone if the user sets the flag.

The measurements behind each setting: experiments/benchmarks/RESULTS.md. Settings made after JAX started are
not effective (XLA's worker threads already own their arenas; the flags are read once), so ``configure_runtime``
warns then. Entry points (``python -m mmdit_jax``, the study experiments, the benchmarks, the test session) call
it first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import warnings

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
MULTI_OUTPUT_FUSION = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
CUBLAS_GEMMS = "--xla_gpu_enable_triton_gemm=false"


def _jax_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    check = getattr(bridge, "backends_are_initialized", None)
    return bool(check and check())


def _warn_if_late(what: str) -> None:
    if _jax_started():
        warnings.warn(f"{what} set after JAX started has no effect on the running backend (XLA's threads keep "
                      "their malloc arenas; XLA_FLAGS are read once). Call configure_runtime() before the "
                      "first JAX computation.", stacklevel=3)


def retain_freed_host_memory() -> bool:
    """Setting 1 above; returns whether it applied (False off Linux/glibc, where it is a no-op)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    _warn_if_late("retain_freed_host_memory")
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return all([libc.mallopt(_M_ARENA_MAX, 1), libc.mallopt(_M_MMAP_MAX, 0),
                libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)])


def _add_xla_flag(flag: str, what: str) -> bool:
    """Append ``flag`` to ``XLA_FLAGS`` unless the user already set its option (then: whether theirs is ours)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if flag.split("=")[0] in flags:
        return flag in flags.split()
    _warn_if_late(what)
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    return True


def enable_multi_output_fusion() -> bool:
    """Setting 2 above, through ``XLA_FLAGS``; False (and unchanged) if the user already sets backend options."""
    return _add_xla_flag(MULTI_OUTPUT_FUSION, "enable_multi_output_fusion")


def use_cublas_gemms() -> bool:
    """Setting 3 above, through ``XLA_FLAGS``; False (and unchanged) if the user already chose."""
    return _add_xla_flag(CUBLAS_GEMMS, "use_cublas_gemms")


def expected_platform() -> str:
    """The platform JAX will compute on here: the first of ``JAX_PLATFORMS`` if set, else ``cuda`` where an NVIDIA
    driver is loaded, else ``cpu``. Decided without starting JAX (that would make the settings too late)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip().lower()
    return "cuda" if os.path.exists("/proc/driver/nvidia") else "cpu"


def configure_runtime() -> dict[str, bool]:
    """The settings of the platform JAX will compute on (1 and 2 on a CPU, 3 on an NVIDIA GPU); returns which
    applied. The CPU settings are left out where an accelerator computes (the host's malloc and XLA:CPU's fusion
    are then not on the step's critical path)."""
    target = expected_platform()
    cpu = target == "cpu"
    return {"retain_freed_host_memory": cpu and retain_freed_host_memory(),
            "multi_output_fusion": cpu and enable_multi_output_fusion(),
            "cublas_gemms": target in ("cuda", "gpu") and use_cublas_gemms()}
