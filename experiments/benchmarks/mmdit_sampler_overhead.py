"""Overhead of the compiled MMDiT sampling loop per function evaluation (flow Euler + CFG, the SD3 sampler).

Target (performance issue): compiled loop <= 1.05 x (NFE x one compiled guided forward). Also reported: the same
guided forward called NFE times inside one compiled ``fori_loop`` (pure model cost, no sampler arithmetic).

Run: ``python experiments/benchmarks/mmdit_sampler_overhead.py [--preset small --batch 8 --steps 28]``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs.mmdit import get_config  # noqa: E402
from experiments.benchmarks.common import append_results, parse_args, time_compiled  # noqa: E402
from mmdit_jax.families import model_config
from mmdit_jax.diffusion.guidance import classifier_free_guidance  # noqa: E402
from mmdit_jax.diffusion.samplers import make_sampler  # noqa: E402
from mmdit_jax.diffusion.schedules import get_schedule  # noqa: E402
from mmdit_jax.models.mmdit import MMDiT, MMDiTConfig  # noqa: E402


def main(preset: str, batch: int, steps: int, text_tokens: int, dtype: str) -> None:
    cfg = model_config({**get_config(preset), "dtype": dtype})
    model = MMDiT(cfg)
    s = cfg.sample_size
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(keys[0], (batch, s, s, cfg.in_channels))
    c = jax.random.normal(keys[1], (batch, text_tokens, cfg.joint_attention_dim))
    y = jax.random.normal(keys[2], (batch, cfg.pooled_projection_dim))
    variables = model.init(keys[3], x, jnp.ones((batch,)), c, y)
    schedule = get_schedule({"name": "rectified_flow", "shift": 3.0})
    guided = classifier_free_guidance(lambda v, x, t, cond: model.apply(v, x, 1000.0 * t, *cond), 5.0)
    conds = ((c, y), (jnp.zeros_like(c), jnp.zeros_like(y)))

    one_call = jax.jit(lambda v, x, t: guided(v, x, t, conds))
    t_call, _ = time_compiled(one_call, variables, x, jnp.full((batch,), 0.5), repeats=10)

    @jax.jit
    def nfe_loop(v, x):
        # .astype: in bf16 the model returns bf16 while the loop carries fp32 latents (as the samplers do).
        body = lambda i, x: guided(v, x, jnp.full((batch,), 0.5), conds).astype(x.dtype)  # noqa: E731
        return jax.lax.fori_loop(0, steps, body, x)

    t_loop, _ = time_compiled(nfe_loop, variables, x, repeats=3)
    sampler = make_sampler({"name": "flow_euler", "n_steps": steps}, schedule, "velocity")
    sample = jax.jit(lambda v, key: sampler(lambda x, t: guided(v, x, t, conds), key, x.shape))
    t_sample, compile_s = time_compiled(sample, variables, jax.random.PRNGKey(5), repeats=3)
    table = (
        f"Preset `{preset}` (D = {cfg.hidden}, {cfg.num_layers} layers), {dtype}, batch {batch} (x2 for CFG), "
        f"{s}x{s}x{cfg.in_channels}, {text_tokens} text tokens; flow Euler, NFE = {steps}, shift 3, CFG 5.\n\n"
        "| quantity | value |\n|---|---|\n"
        f"| one compiled guided forward (Python dispatch) | {t_call * 1e3:.1f} ms |\n"
        f"| NFE guided forwards in one compiled loop | {t_loop * 1e3:.1f} ms ({t_loop / steps * 1e3:.1f} ms / NFE) |\n"
        f"| compiled flow-Euler sampler | {t_sample * 1e3:.1f} ms ({t_sample / steps * 1e3:.1f} ms / NFE); "
        f"compile {compile_s:.1f} s |\n"
        f"| sampler / (NFE x one compiled call) | **{t_sample / (steps * t_call):.3f}** (target <= 1.05) |\n"
        f"| sampler / (NFE calls in a compiled loop) | {t_sample / t_loop:.3f} |\n")
    print(table)
    append_results("Sampler loop overhead (MMDiT, flow Euler + CFG)", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--text_tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    a = parse_args(ap)
    main(a.preset, a.batch, a.steps, a.text_tokens, a.dtype)
