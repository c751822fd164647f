"""The trainer's optimizer update of the MMDiT's parameters against its memory floor.

The update is ``mmdit_jax.train.state.make_optimizer`` (global-norm clipping, then AdamW on the learning-rate
schedule) applied as the train step applies it (``optax.apply_updates``), parameters and optimizer state donated.
AdamW reads parameter, gradient and both moments and writes parameter and moments: 28 bytes per fp32 parameter;
clipping needs the gradient's global norm before any update, one more read of the gradient: 32 bytes. The floor
is those bytes over the bandwidth of a plain streaming kernel measured here (2 reads + 3 writes per element over
as many elements). The EMA update of the train step is not included (``mfu.py`` times the whole step).

Run: ``python experiments/benchmarks/optimizer.py [--preset small]``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import optax  # noqa: E402

from experiments.benchmarks.common import (  # noqa: E402
    append_results, benchmark_config, parse_args, sd3_model, time_compiled)
from mmdit_jax.families import model_config  # noqa: E402
from mmdit_jax.models.flops import num_parameters  # noqa: E402
from mmdit_jax.models.mmdit_params import abstract_variables  # noqa: E402
from mmdit_jax.train.state import make_optimizer  # noqa: E402


def main(preset: str, repeats: int) -> None:
    config = benchmark_config(sd3_model(preset))
    shapes = abstract_variables(model_config(config.model))["params"]
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 2 * len(jax.tree_util.tree_leaves(shapes)) + 2))
    params = jax.tree_util.tree_map(lambda s: 0.02 * jax.random.normal(next(keys), s.shape, s.dtype), shapes)
    grads = jax.tree_util.tree_map(lambda s: 1e-3 * jax.random.normal(next(keys), s.shape, s.dtype), shapes)
    n = num_parameters(params)
    opt = make_optimizer(config.optim, config.train.num_steps)

    def update(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(update, donate_argnums=(0, 1))  # as in the train step
    state = [params, opt.init(params)]

    def run():
        state[0], state[1] = step(state[0], state[1], grads)
        return state[0]

    t_update, compile_s = time_compiled(run, repeats=repeats)
    a, b = jax.random.normal(next(keys), (n,)), jax.random.normal(next(keys), (n,))
    stream = jax.jit(lambda a, b: (a * 0.5 + b, b * 0.9 + a * 0.1, a - b))  # 2 reads + 3 writes = 20 B / element
    t_stream, _ = time_compiled(stream, a, b, repeats=repeats)
    bandwidth = 20 * n / t_stream
    clip = config.optim.grad_clip > 0
    per_param = 32 if clip else 28
    floor = per_param * n / bandwidth
    table = (f"Preset `{preset}` ({n / 1e6:.1f} M fp32 parameters), make_optimizer (AdamW"
             f"{', after global-norm clipping' if clip else ''}), params and state donated; median of {repeats}."
             f"\n\n| quantity | value |\n|---|---|\n"
             f"| optimizer update | {t_update * 1e3:.1f} ms (compile {compile_s:.1f} s) |\n"
             f"| streaming bandwidth (2 reads + 3 writes) | {bandwidth / 1e9:.1f} GB/s |\n"
             f"| floor: {per_param} B / parameter at that bandwidth | {floor * 1e3:.1f} ms |\n"
             f"| **update / floor** | **{t_update / floor:.2f}** |\n")
    print(table)
    append_results("Optimizer update (make_optimizer: clipping + AdamW) vs its memory floor", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--repeats", type=int, default=20)
    a = parse_args(ap)
    main(a.preset, a.repeats)
