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
