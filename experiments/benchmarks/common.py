"""Shared benchmark helpers: timing of compiled functions and the machine description for RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import time
from typing import Any, Callable

import jax
import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def time_compiled(fn: Callable[..., Any], *args: Any, repeats: int = 5) -> tuple[float, float]:
    """Compile (first call, timed separately) then return (median seconds per call, compile seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), compile_s


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` (which must block until its result is ready) over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_peak(dtype: Any = np.float32, n: int = 2048, repeats: int = 8) -> float:
    """Measured FLOP/s of a chain of ``n x n`` matmuls in ``dtype``: the peak that MFU divides by."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    f = jax.jit(lambda a, b: jax.lax.fori_loop(0, repeats, lambda i, c: (c @ b) * 0.5, a))
    t, _ = time_compiled(f, a, b)
    return 2 * n**3 * repeats / t


def machine() -> str:
    dev = jax.devices()[0]
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}; "
            f"JAX {jax.__version__}, device {dev.platform}:{getattr(dev, 'device_kind', '?')}")


def append_results(title: str, table: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a") as f:
        if new:
            f.write("# Benchmark results\n\nEach entry is appended by the script that measured it.\n")
        f.write(f"\n## {title} — {stamp}\n\nMachine: {machine()}\n\n{table}\n")
