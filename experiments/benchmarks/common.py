"""Shared benchmark helpers: timing of compiled functions and the machine description for RESULTS.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmdit_jax.runtime import configure_runtime
from mmdit_jax.models.mmdit_params import cast_kernels

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


def ab_pairs(ours: Callable[[], Any], theirs: Callable[[], Any], pairs: int,
             repeats: int) -> tuple[float, float, list[float]]:
    """Alternate A B A B: ``pairs`` x (median-of-``repeats`` of ours, then of theirs). Returns (median seconds
    ours, median seconds theirs, per-pair speed-ups theirs / ours)."""
    t_ours, t_theirs = [], []
    for _ in range(pairs):
        t_ours.append(median_time(ours, repeats))
        t_theirs.append(median_time(theirs, repeats))
    return float(np.median(t_ours)), float(np.median(t_theirs)), [b / a for a, b in zip(t_ours, t_theirs)]


def speedups(ratios: list[float]) -> str:
    """``1.31x (1.37, 1.12, ...)``: the median speed-up and every pair's."""
    return f"{np.median(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})"


def adamw_train_step(model: Any, buffers: Any, donate: bool = True,
                     cast: bool = True) -> tuple[Callable[..., Any], Any]:
    """The benchmarks' MMDiT train step and its optimiser (for ``opt.init``): ``step(params, opt_state, x, t, c, y,
    target) -> (params, opt_state, loss)``, MSE in fp32, AdamW 1e-4, jitted with params and optimiser state
    donated and kernels cast to the compute dtype once per step (as the real train step does) unless
    ``donate=False`` / ``cast=False``."""
    opt = optax.adamw(1e-4)

    def loss_fn(p, x, t, c, y, target):
        p = cast_kernels(p, model.config.dtype) if cast else p
        return jnp.mean((model.apply({"params": p, **buffers}, x, t, c, y).astype(jnp.float32) - target) ** 2)

    def step(p, s, x, t, c, y, target):
        loss, g = jax.value_and_grad(loss_fn)(p, x, t, c, y, target)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    return jax.jit(step, donate_argnums=(0, 1) if donate else ()), opt


def device_peak_memory() -> str:
    """The device allocator's peak bytes in use so far in this process (e.g. ``"61.2 GiB"``); "n/a" where the
    backend keeps no statistics (XLA:CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return f"{peak / 2**30:.1f} GiB" if peak else "n/a"


def matmul_chain(dtype: Any = np.float32, n: int | None = None,
                 repeats: int | None = None) -> tuple[Callable[[], Any], float]:
    """``(run, flops)``: ``run()`` computes (and blocks on) a chain of ``repeats`` ``n x n`` matmuls in ``dtype``,
    compiled on the first call; the peak that MFU divides by is ``flops`` over its time.

    Defaults: on a CPU n = 2048, 8 products; on an accelerator n = 8192 (2048 leaves a GPU's matrix units idle)
    and 32 products, ~45 ms a call on an H200 (8, i.e. ~12 ms, read 658-730 TFLOP/s across processes in session
    5). Each product is scaled by 1/sqrt(n), so the chain's values neither overflow nor vanish.
    """
    cpu = jax.devices()[0].platform == "cpu"
    n, repeats = n or (2048 if cpu else 8192), repeats or (8 if cpu else 32)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    scale = jnp.asarray(1.0 / np.sqrt(n), dtype)
    f = jax.jit(lambda a, b: jax.lax.fori_loop(0, repeats, lambda i, c: (c @ b) * scale, a))
    return (lambda: jax.block_until_ready(f(a, b))), 2 * n**3 * repeats


def matmul_peak(dtype: Any = np.float32, n: int | None = None, repeats: int | None = None) -> float:
    """Measured FLOP/s of ``matmul_chain`` (median of 5 calls after the compiling one)."""
    run, flops = matmul_chain(dtype, n, repeats)
    t, _ = time_compiled(run)
    return flops / t


class TorchSide:
    """The PyTorch reference's device, precision and clock: CUDA when present (timed after a synchronize),
    else the CPU with every core; ``dtype="bfloat16"`` runs it under autocast with fp32 weights, the same
    mixed-precision policy as ``dtype=bfloat16, param_dtype=float32`` on our side."""

    def __init__(self, dtype: str = "float32"):
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(os.cpu_count())
        self.dtype = dtype

    def autocast(self) -> Any:
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return self.torch.autocast(self.device, dtype=getattr(self.torch, self.dtype))

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def describe(self) -> str:
        t = self.torch
        where = t.cuda.get_device_name() if self.device == "cuda" else f"{t.get_num_threads()} CPU threads"
        return f"torch {t.__version__} on {where}, {self.dtype}" + (" autocast" if self.dtype != "float32" else "")


_RUNTIME = ["library defaults"]


def parse_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse a benchmark's arguments plus ``--default_runtime``, then (before the first JAX computation)
    apply the settings the training entry point uses unless that flag is given; the choice is recorded in every
    results entry."""
    ap.add_argument("--default_runtime", action="store_true",
                    help="leave malloc and XLA's flags as they are (default: the settings of mmdit_jax.runtime)")
    args = ap.parse_args()
    if not args.default_runtime:
        applied = [k for k, ok in configure_runtime().items() if ok]
        _RUNTIME[0] = "mmdit_jax.runtime: " + (", ".join(applied) or "nothing applied")
    return args


def machine() -> str:
    dev = jax.devices()[0]
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}; "
            f"JAX {jax.__version__}, device {dev.platform}:{getattr(dev, 'device_kind', '?')}; "
            f"runtime settings: {_RUNTIME[0]}")


def append_results(title: str, table: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a") as f:
        if new:
            f.write("# Benchmark results\n\nEach entry is appended by the script that measured it.\n")
        f.write(f"\n## {title} — {stamp}\n\nMachine: {machine()}\n\n{table}\n")
