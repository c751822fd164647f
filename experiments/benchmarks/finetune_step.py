"""Full fine-tuning vs LoRA: the train step's time and the trained state's size (params + EMA + optimizer state)
on the model of an experiment config (default: ``configs/default.py``'s MMDiT), with the trainer's own step.

A LoRA step trains the adapter on frozen weights (``mmdit_jax.adapters``): it still runs the model's forward and
backward, so it cannot be much faster than full fine-tuning; it skips the frozen kernels' weight gradients and
their AdamW/EMA updates, and keeps optimizer state for the adapter only.

Run: ``python experiments/benchmarks/finetune_step.py [--config configs/default.py --batch 32 --ranks 4,8,32]``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

from experiments.benchmarks.common import (  # noqa: E402
    TrainStep, append_results, benchmark_config, median_time, parse_args, random_batch)
from mmdit_jax.adapters.lora import ATTENTION_TARGETS, LoraConfig  # noqa: E402
from mmdit_jax.components.from_config import family_from_config  # noqa: E402
from mmdit_jax.models.flops import num_parameters  # noqa: E402


def state_megabytes(state) -> float:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state)) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.py", help="experiment config whose model section is used")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--ranks", default="4,8,32", help="LoRA ranks, comma-separated")
    ap.add_argument("--repeats", type=int, default=10)
    args = parse_args(ap)
    model = importlib.import_module(args.config[:-len(".py")].replace("/", ".")).get_config().model
    config = benchmark_config(model)
    batch = random_batch(family_from_config(config), args.batch, args.size, args.tokens)
    rows = []
    variants = [("full", None)] + [(f"LoRA r={r}", LoraConfig(rank=int(r))) for r in args.ranks.split(",")]
    for name, lora in variants:
        step = TrainStep(config, batch, lora=lora)
        jax.block_until_ready(step())                     # compile
        seconds = median_time(lambda: jax.block_until_ready(step()), args.repeats)
        trained = num_parameters(step.state.params)
        rows.append(f"| {name} | {trained:,} | {state_megabytes(step.state):.1f} | "
                    f"{num_parameters(step.state.opt_state):,} | {1000 * seconds:.0f} |")
        print(rows[-1], flush=True)
    table = (f"`{args.config}` model, batch {args.batch}, {args.size}x{args.size}, {args.tokens} text tokens; LoRA "
             f"targets {', '.join(ATTENTION_TARGETS)}; median of {args.repeats} steps.\n\n"
             "| variant | trained parameters | trained state (params + EMA + AdamW), MiB | optimizer state "
             "scalars | step, ms |\n|---|---|---|---|---|\n" + "\n".join(rows))
    append_results("Fine-tuning step: full vs LoRA", table)


if __name__ == "__main__":
    main()
