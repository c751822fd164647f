"""Shared benchmark helpers: the project's own train step on random data, timing of compiled functions, and the
raw results entries appended to ARCHIVE.md (RESULTS.md is the curated summary they are folded into by hand).

The MMDiT benchmarks time ``mmdit_jax.train.step.make_train_step`` (loss of the score-based core, AdamW from
``mmdit_jax.train.state.make_optimizer``, EMA, loss buckets) exactly as training compiles it, so a number here is
a number of the trainer, not of a look-alike. ``benchmark_config`` holds the few config sections that step reads.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.mmdit import PRESETS
from mmdit_jax.adapters.lora import LoraConfig, init_lora, merge
from mmdit_jax.families import Family, family_config
from mmdit_jax.components.from_config import family_from_config
from mmdit_jax.reporting import machine as machine_line
from mmdit_jax.runtime import configure_runtime
from mmdit_jax.train.state import init_state, learning_rate_schedule, make_optimizer
from mmdit_jax.train.step import make_train_step

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ARCHIVE.md")


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


def sd3_model(preset: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The ``model`` section of ``configs/mmdit.py``'s ``preset`` with ``overrides`` (unknown fields rejected)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    return family_config("sd3", **{**PRESETS[preset], **overrides})


def benchmark_config(model: ml_collections.ConfigDict, num_steps: int = 10_000) -> ml_collections.ConfigDict:
    """What the family, the optimizer and the train step read from a run's config: SD3's recipe (rectified flow
    with shift 3, logit-normal t, velocity loss, the network sees ``1000 t``), AdamW with PyTorch's betas, eps
    and weight decay (``mmdit_step.py``'s PyTorch side runs the same update) after clipping at global norm 1, EMA.
    None of these values changes the amount of work, only what the numbers converge to."""
    return ml_collections.ConfigDict(dict(
        model=model,
        schedule=dict(name="rectified_flow", shift=3.0, t_sampling="logit_normal", logit_mean=0.0, logit_std=1.0),
        timestep_scale=1000.0,
        model_parameterization="velocity",
        loss=dict(name="velocity"),
        optim=dict(learning_rate=1e-4, warmup_steps=100, schedule="cosine", final_lr_fraction=0.1, b1=0.9,
                   b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0),
        train=dict(num_steps=num_steps, ema_decay=0.9999, loss_buckets=4),
    ))


def random_batch(family: Family, batch: int, size: int, tokens: int, seed: int = 0) -> dict[str, Any]:
    """A device-resident train batch ``{"x": (B, size, size, C), "cond": {"context", "pooled"}}`` of normal
    noise: an all-zero batch can run faster than real inputs."""
    cfg = family.config
    # FLUX's in_channels counts the 2x2-packed token width; its data are latents of in_channels / 4 channels
    channels = cfg.latent_channels if hasattr(cfg, "latent_channels") else cfg.in_channels
    kx, kc, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {"x": jax.random.normal(kx, (batch, size, size, channels)),
            "cond": {"context": jax.random.normal(kc, (batch, tokens, cfg.joint_attention_dim)),
                     "pooled": jax.random.normal(ky, (batch, cfg.pooled_projection_dim))}}


def cond_shapes(batch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in batch["cond"].items()}


class TrainStep:
    """The project's train step on one fixed batch, built as ``Experiment.train_step`` builds it: family from
    the config, ``make_optimizer`` / ``init_state``, ``make_train_step`` jitted with the state donated (unless
    ``donate=False``). Calling it runs one step in place and returns the step's loss (not waited for).

    ``family`` replaces the config's family (a variant of it, e.g. one whose ``prepare`` differs); ``flops`` is
    3 x the family's analytic forward FLOPs (backward = 2 x forward).
    """

    def __init__(self, config: Any, batch: dict[str, Any], family: Family | None = None, donate: bool = True,
                 seed: int = 0, lora: LoraConfig | None = None):
        self.family = family or family_from_config(config)
        self.batch = batch
        variables = jax.jit(self.family.init)(jax.random.PRNGKey(seed), batch["x"], batch["cond"])
        num_steps = config.train.num_steps
        optimizer = make_optimizer(config.optim, num_steps)
        # lora: the state trains an adapter on the frozen initial weights, as a LoRA fine-tune's step does
        trained = variables["params"] if lora is None else init_lora(jax.random.PRNGKey(seed), variables["params"], lora)
        self.frozen = None if lora is None else variables["params"]
        self.lora = lora
        self.state = init_state(trained, optimizer)
        self.non_trainable = self.family.non_trainable(variables)
        compose = None if lora is None else (lambda base, adapter: merge(base, adapter, lora.scale))
        step = make_train_step(self.family, self.non_trainable, optimizer, config,
                               learning_rate_schedule(config.optim, num_steps), compose=compose)
        self.step = jax.jit(step, donate_argnums=(0,) if donate else ())
        self.key = jax.random.PRNGKey(seed + 1)
        x = batch["x"]
        self.flops = 3 * self.family.forward_flops(x.shape[0], tuple(x.shape[1:]), cond_shapes(batch))

    @property
    def variables(self) -> dict[str, Any]:
        """The current model variables (the next step donates them: use them before it)."""
        params = self.state.params if self.frozen is None else merge(self.frozen, self.state.params, self.lora.scale)
        return {"params": params, **self.non_trainable}

    def __call__(self) -> jax.Array:
        self.state, metrics = self.step(self.state, self.batch, self.key, self.frozen)
        return metrics["loss"]


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
    and 32 products, so that one call lasts long enough for launch overhead and clock ramp-up to vanish from the
    rate. Each product is scaled by 1/sqrt(n), so the chain's values neither overflow nor vanish.
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
_RESULTS = [RESULTS]


def parse_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse a benchmark's arguments plus ``--default_runtime`` and ``--results``, then (before the first JAX
    computation) apply the settings the training entry point uses unless ``--default_runtime`` is given; the
    choice is recorded in every results entry."""
    ap.add_argument("--default_runtime", action="store_true",
                    help="leave malloc and XLA's flags as they are (default: the settings of mmdit_jax.runtime)")
    ap.add_argument("--results", default=RESULTS,
                    help="markdown file the entry is appended to (smoke runs: a scratch file, e.g. /tmp/results.md)")
    args = ap.parse_args()
    _RESULTS[0] = args.results
    if not args.default_runtime:
        applied = [k for k, ok in configure_runtime().items() if ok]
        _RUNTIME[0] = "mmdit_jax.runtime: " + (", ".join(applied) or "nothing applied")
    return args


def machine() -> str:
    """``mmdit_jax.reporting.machine`` with the runtime settings the benchmark ran under."""
    return machine_line(extra=f"runtime settings: {_RUNTIME[0]}")


def append_results(title: str, table: str) -> None:
    """Append a dated entry (title, machine, table) to the results file (``--results``, default ARCHIVE.md)."""
    path = _RESULTS[0]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("# Benchmark archive\n\nEach entry is appended by the script that measured it (the curated "
                    "summary: RESULTS.md).\n")
        f.write(f"\n## {title} — {stamp}\n\nMachine: {machine()}\n\n{table}\n")
