"""The AdamW update of the MMDiT's parameters against its memory floor.

AdamW reads parameter, gradient and both moments and writes parameter and moments: 28 bytes per fp32
parameter. The floor is those bytes over the bandwidth of a plain streaming kernel measured here (2 reads +
3 writes per element over as many elements). Run: ``python experiments/benchmarks/optimizer.py [--preset small]``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import optax  # noqa: E402

from configs.mmdit import get_config  # noqa: E402
from experiments.benchmarks.common import append_results, parse_args, time_compiled  # noqa: E402
from mmdit_jax.models.mmdit import MMDiTConfig  # noqa: E402
from mmdit_jax.models.mmdit_params import abstract_variables, count_params  # noqa: E402


def main(preset: str, repeats: int) -> None:
    cfg = MMDiTConfig.from_dict(dict(get_config(preset)))
    shapes = abstract_variables(cfg)["params"]
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 2 * len(jax.tree_util.tree_leaves(shapes)) + 2))
    params = jax.tree_util.tree_map(lambda s: 0.02 * jax.random.normal(next(keys), s.shape, s.dtype), shapes)
    grads = jax.tree_util.tree_map(lambda s: 1e-3 * jax.random.normal(next(keys), s.shape, s.dtype), shapes)
    n = count_params(params)
    opt = optax.adamw(1e-4)

    def update(p, s, g):
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    step = jax.jit(update, donate_argnums=(0, 1))  # as in the train step
    state = [params, opt.init(params)]

    def run():
        state[0], state[1] = step(state[0], state[1], grads)
        return state[0]

    t_adam, compile_s = time_compiled(run, repeats=repeats)
    a, b = jax.random.normal(next(keys), (n,)), jax.random.normal(next(keys), (n,))
    stream = jax.jit(lambda a, b: (a * 0.5 + b, b * 0.9 + a * 0.1, a - b))  # 2 reads + 3 writes = 20 B / element
    t_stream, _ = time_compiled(stream, a, b, repeats=repeats)
    bandwidth = 20 * n / t_stream
    floor = 28 * n / bandwidth
    table = (f"Preset `{preset}` ({n / 1e6:.1f} M fp32 parameters), optax.adamw, params and state donated; "
             f"median of {repeats}.\n\n| quantity | value |\n|---|---|\n"
             f"| AdamW update | {t_adam * 1e3:.1f} ms (compile {compile_s:.1f} s) |\n"
             f"| streaming bandwidth (2 reads + 3 writes) | {bandwidth / 1e9:.1f} GB/s |\n"
             f"| floor: 28 B / parameter at that bandwidth | {floor * 1e3:.1f} ms |\n"
             f"| **update / floor** | **{t_adam / floor:.2f}** |\n")
    print(table)
    append_results("AdamW update vs its memory floor", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--repeats", type=int, default=20)
    a = parse_args(ap)
    main(a.preset, a.repeats)
