"""Overhead of the compiled annealed-Langevin loop per function evaluation (NFE) on the 2D toy's MLP score.

The loop is the core's sampler as a config builds it (``make_sampler({"name": "annealed_langevin", ...})``) on
the ``mlp`` family (``configs/ncsn_toy.py``'s model and geometric ladder, random weights), eps-parameterised as
the toy trains it; the score it calls is ``ve_score_fn`` of ``family.net``, what the sampler wraps the net in.
Target: ALD time <= 1.05 x (NFE x one compiled score call). Two baselines are reported: one compiled score call
dispatched from Python (what a Python loop would pay per step), and the same score evaluated NFE times inside
one compiled ``fori_loop`` (the pure model cost, no Langevin arithmetic).

Run: ``python experiments/benchmarks/sampler_overhead.py [--batch 1280 --steps_each 100]``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs.ncsn_toy import get_config  # noqa: E402
from experiments.benchmarks.common import append_results, parse_args, time_compiled  # noqa: E402
from mmdit_jax.diffusion.parameterization import ve_score_fn  # noqa: E402
from mmdit_jax.diffusion.samplers import make_sampler  # noqa: E402
from mmdit_jax.diffusion.schedules import get_schedule  # noqa: E402
from mmdit_jax.families import build_family, family_config  # noqa: E402

PARAMETERIZATION = "eps"


def main(batch: int = 1280, levels: int = 10, steps_each: int = 100, hidden: int = 128) -> None:
    toy = get_config()
    schedule = get_schedule({**toy.schedule, "num_levels": levels})
    family = build_family(family_config("mlp", **{**toy.model, "hidden": hidden}), schedule)
    params = jax.jit(family.init)(jax.random.PRNGKey(0), jnp.zeros((1, 2)), {})
    sampler = make_sampler({"name": "annealed_langevin", "n_steps_each": steps_each,
                            "step_size": toy.annealed.step_size, "denoise": False}, schedule, PARAMETERIZATION)
    sigmas = schedule.sigmas
    nfe = levels * steps_each
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, 2))

    def score(params, x, sigma):
        return ve_score_fn(family.net(params, {}), schedule, PARAMETERIZATION)(x, sigma)

    one_call = jax.jit(score)
    t_call, _ = time_compiled(one_call, params, x, jnp.float32(1.0), repeats=200)

    @jax.jit
    def nfe_loop(params, x):
        return jax.lax.fori_loop(0, nfe, lambda i, x: score(params, x, sigmas[i // steps_each]), x)

    t_loop, _ = time_compiled(nfe_loop, params, x)
    ald = jax.jit(lambda params, key: sampler(family.net(params, {}), key, x.shape))
    t_ald, compile_s = time_compiled(ald, params, jax.random.PRNGKey(2))
    cfg = family.config
    table = (
        f"Annealed Langevin (make_sampler), `mlp` family {cfg.depth}x{cfg.hidden} softplus, batch {batch}, "
        f"L = {levels}, T = {steps_each} (NFE = {nfe}).\n\n"
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
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1280)
    ap.add_argument("--levels", type=int, default=10, help="noise levels L of the ladder")
    ap.add_argument("--steps_each", type=int, default=100, help="Langevin steps T per level")
    ap.add_argument("--hidden", type=int, default=128)
    a = parse_args(ap)
    main(a.batch, a.levels, a.steps_each, a.hidden)
