"""Process settings that make XLA:CPU training faster; both must be made before the first JAX computation.

1. Keep freed host memory mapped (glibc ``mallopt``). XLA:CPU takes every execution's temporary buffer
   (788 MB for the small-preset MMDiT train step) from ``malloc`` on one of its worker threads. glibc serves a
   request over 64 MB in a thread's own arena with a fresh ``mmap`` and unmaps it on ``free``, so each step
   faults the whole buffer in again, page by page: on this project's 2-core CI machine 213k page faults and
   320 ms of kernel time per step, the step ~20% slower. One arena, no ``mmap`` and no trimming keep the pages.
   Cost: the process keeps its peak heap (freed memory is reused, not returned to the OS).
2. XLA:CPU multi-output fusion. Without it the instruction fusion pass may duplicate producers into every
   consumer, and the backward pass's residual-stream gradient is recomputed from all later blocks inside
   each consumer (fusions of ~450 instructions; 32k fused instructions in the train step, 12k with it): the
   compile takes ~40% less time and the step ~2% less. Same operations, so the same maths.

Numbers: experiments/benchmarks/RESULTS.md. Settings made after JAX started are not effective (XLA's worker
threads already own their arenas; the flags are read once), so ``configure_cpu_runtime`` warns then.
Entry points (``python -m mmdit_jax``, the study experiments, the benchmarks, the test session) call it first.
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


def _jax_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    check = getattr(bridge, "backends_are_initialized", None)
    return bool(check and check())


def _warn_if_late(what: str) -> None:
    if _jax_started():
        warnings.warn(f"{what} set after JAX started has no effect on the running backend (XLA's threads keep "
                      "their malloc arenas; XLA_FLAGS are read once). Call configure_cpu_runtime() before the "
                      "first JAX computation.", stacklevel=3)


def retain_freed_host_memory() -> bool:
    """Setting 1 above; returns whether it applied (False off Linux/glibc, where it is a no-op)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    _warn_if_late("retain_freed_host_memory")
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return all([libc.mallopt(_M_ARENA_MAX, 1), libc.mallopt(_M_MMAP_MAX, 0),
                libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)])


def enable_multi_output_fusion() -> bool:
    """Setting 2 above, through ``XLA_FLAGS``; False (and unchanged) if the user already sets backend options."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_extra_options" in flags:
        return MULTI_OUTPUT_FUSION in flags.split()
    _warn_if_late("enable_multi_output_fusion")
    os.environ["XLA_FLAGS"] = f"{flags} {MULTI_OUTPUT_FUSION}".strip()
    return True


def accelerator_expected() -> bool:
    """Whether JAX will run on an accelerator here: ``JAX_PLATFORMS`` names no ``cpu``, or it is unset and an
    NVIDIA driver is loaded. Decided without starting JAX (that would make the settings too late)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return "cpu" not in platforms.split(",")[0]
    return os.path.exists("/proc/driver/nvidia")


def configure_cpu_runtime() -> dict[str, bool]:
    """Both settings when JAX will compute on the CPU; returns which applied. Nothing is changed where an
    accelerator runs the computation (the host's malloc and XLA:CPU's fusion are then not on its critical path)."""
    if accelerator_expected():
        return {"retain_freed_host_memory": False, "multi_output_fusion": False}
    return {"retain_freed_host_memory": retain_freed_host_memory(),
            "multi_output_fusion": enable_multi_output_fusion()}
