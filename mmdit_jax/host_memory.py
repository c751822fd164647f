"""Host-allocator setting for CPU training: keep freed memory mapped instead of returning it to the OS.

Why: XLA:CPU takes every execution's temporary buffer (788 MB for the small-preset MMDiT train step) from
``malloc`` on one of its worker threads. glibc serves a request over 64 MB in a thread's own arena with a fresh
``mmap`` and unmaps it on ``free``, so each step faults the whole buffer in again, page by page: measured on this
project's 2-core CI machine, 213k page faults and 320 ms of kernel time per step, the step 20% slower
(experiments/benchmarks/RESULTS.md). One arena, no ``mmap`` and no trimming keep the pages across steps.

The cost: the process keeps its peak heap (freed memory is reused, not returned). The setting only takes effect
for threads that have not allocated yet, so it must run before the first JAX computation; the entry points
(``python -m mmdit_jax``, the experiments, the benchmarks, the test session) call it first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys
import warnings

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _backends_initialized() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    check = getattr(bridge, "backends_are_initialized", None)
    return bool(check and check())


def retain_freed_host_memory() -> bool:
    """Configure glibc malloc as above; returns whether it applied (False off Linux/glibc, a no-op there).

    Warns when JAX already runs computations, since XLA's worker threads then keep their own arenas.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if _backends_initialized():
        warnings.warn("retain_freed_host_memory() called after JAX started: XLA's worker threads keep their own "
                      "malloc arenas, so per-step page faults remain. Call it before the first JAX computation.",
                      stacklevel=2)
    ok = [libc.mallopt(_M_ARENA_MAX, 1), libc.mallopt(_M_MMAP_MAX, 0), libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)]
    return all(ok)
