"""Model FLOP utilisation of the MMDiT train step: achieved FLOP/s (analytic count, train = 3 x forward) over
the peak measured here (a large matmul in the same dtype). Runs unchanged on a GPU (use --dtype bfloat16).

The step is the trainer's own (``common.TrainStep``: ``make_train_step`` with ``make_optimizer``, EMA and loss
buckets included) on one random device-resident batch. The model flags are ``model`` config fields. Two flags
select variants of how the step is compiled, not of the model: ``--no_donate`` (the state is not donated, so
XLA cannot update it in place) and ``--no_cast``, which swaps in an SD3 family whose ``prepare`` leaves the
kernels in float32, so the model casts each kernel where it is used (inside the loop under ``--scan_blocks``)
instead of once per step.

Run: ``python experiments/benchmarks/mfu.py [--preset small --batch 8 --dtype float32]``; ``--preset
configs/flux_shapes.py --batch 32 --size 16`` measures the model of an experiment config (any family) instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks.common import (  # noqa: E402
    TrainStep, append_results, benchmark_config, device_peak_memory, matmul_chain, median_time, parse_args,
    random_batch, sd3_model, time_compiled)
from mmdit_jax.families.sd3 import SD3Family  # noqa: E402
from mmdit_jax.components.from_config import family_from_config  # noqa: E402


class CastWhereUsed(SD3Family):
    """The SD3 family with kernels left in float32 by ``prepare``: the model casts each one where it is used."""

    def prepare(self, variables: Any) -> dict[str, Any]:
        return dict(variables)


def make_step(preset: str, batch: int, size: int, tokens: int, dtype: str, attention_impl: str | None = None,
              scan_blocks: bool = False, remat: bool = False, donate: bool = True,
              scan_unroll: int = 1, cast: bool = True, head_groups: int | None = None,
              remat_policy: str = "full") -> tuple[Callable[[], jax.Array], float]:
    """The benchmarked train step on random data: ``(run, flops)`` where ``run()`` does one step in place (the
    state is replaced by the step's outputs) and returns the loss; ``flops`` = 3 x analytic forward."""
    if preset.startswith("configs/"):     # the model section of an experiment config, e.g. configs/flux_shapes.py
        model = importlib.import_module(preset[:-len(".py")].replace("/", ".")).get_config().model
        model.update(dtype=dtype, scan_blocks=scan_blocks, remat=remat, remat_policy=remat_policy,
                     scan_unroll=scan_unroll)
    else:
        model = sd3_model(preset, dtype=dtype, attention_impl=attention_impl, scan_blocks=scan_blocks, remat=remat,
                          remat_policy=remat_policy, scan_unroll=scan_unroll,
                          **({} if head_groups is None else {"attention_head_groups": head_groups}))
    config = benchmark_config(model)
    family = family_from_config(config)
    if not cast:
        family = CastWhereUsed(family.config, family.schedule, family.timestep_scale, family.forward_mode)
    step = TrainStep(config, random_batch(family, batch, size, tokens), family, donate)
    return step, step.flops


def add_step_args(ap: argparse.ArgumentParser) -> None:
    """The train step's shape and variant flags, shared with ``profile_step.py``."""
    ap.add_argument("--preset", default="small",
                    help="a configs/mmdit.py preset, or a config file whose model section to use (configs/flux_shapes.py)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attention_impl", default=None, help="None (per platform) | xla | cudnn | einsum | einsum_vjp")
    ap.add_argument("--scan_blocks", action="store_true", help="lax.scan over the blocks (faster compile)")
    ap.add_argument("--scan_unroll", type=int, default=1, help="blocks per scan iteration (with --scan_blocks)")
    ap.add_argument("--remat", action="store_true", help="rematerialise each block in the backward")
    ap.add_argument("--remat_policy", default="full", help="with --remat: full | minimal | dots (models/mmdit.py)")
    ap.add_argument("--no_cast", action="store_true", help="cast kernels where used (inside the scan), not once")
    ap.add_argument("--attention_head_groups", type=int, default=None,
                    help="einsum attention: B*H heads as this many concurrent groups (default: the preset's)")


def remat_label(a: argparse.Namespace) -> str:
    """``remat`` as the result tables print it: ``True (minimal)`` names the policy, ``False`` alone."""
    return f"{a.remat} ({a.remat_policy})" if a.remat else str(a.remat)


def step_from_args(a: argparse.Namespace, donate: bool = True) -> tuple[Callable[[], jax.Array], float]:
    """``make_step`` for the flags of ``add_step_args``."""
    return make_step(a.preset, a.batch, a.size, a.tokens, a.dtype, a.attention_impl, a.scan_blocks, a.remat,
                     donate, a.scan_unroll, not a.no_cast, a.attention_head_groups, a.remat_policy)


def main(a: argparse.Namespace) -> None:
    donate, cast = not a.no_donate, not a.no_cast
    run, flops = step_from_args(a, donate)
    _, compile_s = time_compiled(run, repeats=1)
    memory = device_peak_memory()  # before the peak's own buffers
    chain, chain_flops = matmul_chain(jnp.dtype(a.dtype))
    chain()  # compiles
    # Rounds of (step, peak) in turn, each round's MFU against the peak measured in that round: a VM whose speed
    # drifts within minutes (this project's CI machine) moves both alike.
    steps, peaks = [], []
    for _ in range(a.rounds):
        steps.append(median_time(lambda: jax.block_until_ready(run()), a.repeats))
        peaks.append(chain_flops / median_time(chain, a.repeats))
    mfus = [flops / t / p for t, p in zip(steps, peaks)]
    t_step, peak = float(np.median(steps)), float(np.median(peaks))
    flags = os.environ.get("XLA_FLAGS", "")
    groups = a.attention_head_groups or (None if a.preset.startswith("configs/") else
                                         sd3_model(a.preset).attention_head_groups)
    table = (f"The trainer's step (make_train_step: velocity loss, clipped AdamW, EMA). "
             f"Preset `{a.preset}`, attention_impl={a.attention_impl}, attention_head_groups={groups}, "
             f"scan_blocks={a.scan_blocks}, scan_unroll={a.scan_unroll}, remat={remat_label(a)}, donate={donate}, "
             f"kernels cast once={cast}, batch {a.batch}, "
             f"{a.size}x{a.size}, {a.tokens} text tokens, {a.dtype}; XLA_FLAGS={flags or '(none)'}. "
             f"{a.rounds} rounds of (median of {a.repeats} steps, median of {a.repeats} peak chains).\n\n"
             "| quantity | value |\n|---|---|\n"
             f"| train step (median of rounds) | {t_step * 1e3:.1f} ms (compile {compile_s:.1f} s) |\n"
             f"| device memory, peak in use | {memory} |\n"
             f"| model FLOPs per step (3 x analytic forward) | {flops / 1e9:.2f} GFLOP |\n"
             f"| achieved | {flops / t_step / 1e9:.1f} GFLOP/s |\n"
             f"| measured matmul peak ({a.dtype}, median of rounds) | {peak / 1e9:.1f} GFLOP/s |\n"
             f"| MFU per round | {', '.join(f'{m:.1%}' for m in mfus)} |\n"
             f"| **MFU** (median of rounds) | **{np.median(mfus):.1%}** |\n")
    print(table)
    append_results("MMDiT train-step MFU", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    add_step_args(ap)
    ap.add_argument("--no_donate", action="store_true", help="do not donate the train state (params, EMA, optimizer state)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of (step, peak) timings, in turn")
    ap.add_argument("--repeats", type=int, default=5, help="calls per median inside a round")
    main(parse_args(ap))
