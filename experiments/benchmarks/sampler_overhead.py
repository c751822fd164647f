"""Overhead of the compiled annealed-Langevin loop per function evaluation (NFE) on a small MLP score.

Target (core issue): ALD time <= 1.05 x (NFE x one compiled score call). Two baselines are reported:
one compiled score call dispatched from Python (what a Python loop would pay per step), and the same
score evaluated NFE times inside one compiled ``fori_loop`` (the pure model cost, no Langevin arithmetic).

Run: ``python experiments/benchmarks/sampler_overhead.py`` (appends to experiments/benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.benchmarks.common import append_results, time_compiled  # noqa: E402
from mmdit_jax.models.mlp import NoiseConditionalMLP  # noqa: E402
from mmdit_jax.diffusion.samplers import annealed_langevin  # noqa: E402


def main(batch: int = 1280, levels: int = 10, steps_each: int = 100, hidden: int = 128) -> None:
    module = NoiseConditionalMLP(hidden=hidden, depth=3)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    sigmas = jnp.exp(jnp.linspace(jnp.log(20.0), 0.0, levels))
    nfe = levels * steps_each
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, 2))

    def score(params, x, sigma):
        return module.apply(params, x, jnp.full(x.shape[:1], jnp.log(sigma))) / sigma

    one_call = jax.jit(score)
    t_call, _ = time_compiled(one_call, params, x, jnp.float32(1.0), repeats=200)

    @jax.jit
    def nfe_loop(params, x):
        return jax.lax.fori_loop(0, nfe, lambda i, x: score(params, x, sigmas[i // steps_each]), x)

    t_loop, _ = time_compiled(nfe_loop, params, x)

    @jax.jit
    def ald(params, x, key):
        return annealed_langevin(lambda y, s: score(params, y, s), x, sigmas, steps_each, 0.05, key)

    t_ald, compile_s = time_compiled(ald, params, x, jax.random.PRNGKey(2))
    table = (
        f"Annealed Langevin, MLP 3x{hidden} softplus, batch {batch}, L = {levels}, T = {steps_each} (NFE = {nfe}).\n\n"
        "| quantity | value |\n|---|---|\n"
        f"| one compiled score call (Python dispatch) | {t_call * 1e6:.1f} µs |\n"
        f"| NFE score calls in one compiled loop | {t_loop * 1e3:.2f} ms ({t_loop / nfe * 1e6:.1f} µs / NFE) |\n"
        f"| compiled ALD loop | {t_ald * 1e3:.2f} ms ({t_ald / nfe * 1e6:.1f} µs / NFE); compile {compile_s:.2f} s |\n"
        f"| ALD / (NFE x one compiled call) | **{t_ald / (nfe * t_call):.3f}** (target <= 1.05) |\n"
        f"| ALD / (NFE calls in a compiled loop) | {t_ald / t_loop:.3f} (Langevin arithmetic + RNG on top of the model) |\n"
    )
    print(table)
    append_results("Sampler loop overhead (annealed Langevin)", table)


if __name__ == "__main__":
    main()
