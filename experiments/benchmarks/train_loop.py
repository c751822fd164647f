"""Training-loop throughput against the bare train step: do the data pipeline, metrics and checkpoints starve it?

The real loop (``mmdit_jax.train.loop.train``: grain pipeline, text-embedding gather, metrics every
``train.log_every`` steps, async checkpoints) runs ``--steps`` steps of ``configs/default.py`` (``--tiny``: its
smoke-test size) in a temporary workdir with sample grids off; its examples/s is the median over its logging
intervals (the first, which holds the compile, is one of many). The bare step is the loop's own compiled step
(``Experiment.train_step``) on one device-resident batch (``Experiment.device_batch``), each call waited for (so it also pays the dispatch latency that the loop's asynchronous dispatch hides), timed before
and after the loop because this VM's speed drifts between minutes. A third run of the same loop reads one fixed
batch instead of the data pipeline: real / fixed is what the pipeline's work costs the loop (on a CPU it shares the
cores with the step), fixed / bare what metrics, checkpoints and dispatch cost.

Run: ``python experiments/benchmarks/train_loop.py [--steps 400]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

from configs.default import get_config  # noqa: E402
from experiments.benchmarks.common import append_results, median_time, parse_args  # noqa: E402
from mmdit_jax.train import experiment as experiment_module  # noqa: E402
from mmdit_jax.train.experiment import build  # noqa: E402
from mmdit_jax.train.loop import train  # noqa: E402


class _FixedBatch:
    """The first batch of an iterator, returned forever (checkpointed state: the wrapped iterator's)."""

    def __init__(self, it):
        self.it, self.batch = it, next(it)

    def __next__(self):
        return self.batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def _train_on_a_fixed_batch(cfg, workdir: str) -> dict:
    real = experiment_module.Experiment.train_iterator
    experiment_module.Experiment.train_iterator = lambda self: _FixedBatch(real(self))
    try:
        return train(cfg, workdir)
    finally:
        experiment_module.Experiment.train_iterator = real


def main(steps: int, repeats: int, tiny: bool = False) -> None:
    cfg = get_config("tiny" if tiny else "")
    # A checkpoint every 100 steps (the default config: 500) so their cost lands inside the measured intervals.
    cfg.train.update(num_steps=steps, sample_every=0, checkpoint_every=100)
    batch_size = cfg.data.batch_size
    with tempfile.TemporaryDirectory() as work:
        exp, _, _ = build(cfg, os.path.join(work, "bare"), restore=False)
        step = exp.train_step()
        batch = exp.device_batch(next(exp.train_iterator()))
        state = {"s": exp.state}

        def bare():
            state["s"], metrics = step(state["s"], batch, jax.random.PRNGKey(0))
            jax.block_until_ready(metrics["loss"])

        bare()  # compile
        t_before = median_time(bare, repeats)
        summary = train(cfg, os.path.join(work, "loop"))
        fixed_rate = _train_on_a_fixed_batch(cfg, os.path.join(work, "fixed"))["examples_per_second"]
        t_after = median_time(bare, repeats)  # this VM's speed drifts within a minute: bracket the loop
    loop_rate = summary["examples_per_second"]
    t_bare = (t_before + t_after) / 2
    bare_rate = batch_size / t_bare
    table = (f"`configs/default.py{':tiny' if tiny else ''}` (batch {batch_size}), {steps} steps of the real loop (sample grids off, "
             f"metrics every {cfg.train.log_every}, checkpoints every {cfg.train.checkpoint_every}); bare step: "
             f"median of {repeats}, timed before and after the loop.\n\n| quantity | value |\n|---|---|\n"
             f"| bare compiled train step, before / after the loop | {t_before * 1e3:.1f} / {t_after * 1e3:.1f} ms |\n"
             f"| bare step, mean of the two | {t_bare * 1e3:.1f} ms = {bare_rate:.0f} examples/s |\n"
             f"| real training loop (median over logging intervals) | {loop_rate:.0f} examples/s |\n"
             f"| loop / bare | **{loop_rate / bare_rate:.3f}** (against before / after alone: "
             f"{loop_rate * t_before / batch_size:.3f} / {loop_rate * t_after / batch_size:.3f}) |\n"
             f"| the same loop on one fixed batch (no data pipeline work) | {fixed_rate:.0f} examples/s |\n"
             f"| loop / fixed-batch loop (the data pipeline's cost) | {loop_rate / fixed_rate:.3f} |\n"
             f"| fixed-batch loop / bare (metrics, checkpoints, dispatch) | {fixed_rate / bare_rate:.3f} |\n")
    print(table)
    append_results("Training loop vs bare step", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--tiny", action="store_true", help="configs/default.py:tiny (smoke-test size)")
    a = parse_args(ap)
    main(a.steps, a.repeats, a.tiny)
