"""Overhead of the compiled MMDiT sampling loop per function evaluation (flow Euler + CFG, the SD3 sampler).

The loop is the sampling pipeline's own program (``SamplingPipeline.sample``: the configured sampler around
classifier-free guidance of ``family.net``, parameters prepared once inside it), on random weights and random
conditioning with the null (all-zero) negative. It is compared with the guided forward it repeats, built the same
way (``classifier_free_guidance`` of ``family.net`` on the prepared variables): called once from Python, and NFE
times inside one compiled ``fori_loop`` (pure model cost, no sampler arithmetic).
Target: compiled loop <= 1.05 x (NFE x one compiled guided forward).

Run: ``python experiments/benchmarks/mmdit_sampler_overhead.py [--preset small --batch 8 --steps 28]``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.benchmarks.common import (  # noqa: E402
    append_results, benchmark_config, parse_args, random_batch, sd3_model, time_compiled)
from mmdit_jax.diffusion.guidance import classifier_free_guidance  # noqa: E402
from mmdit_jax.components.from_config import family_from_config  # noqa: E402
from mmdit_jax.pipelines.sampling import SamplingPipeline  # noqa: E402
from mmdit_jax.pipelines.trained_model import TrainedModel  # noqa: E402

GUIDANCE = 5.0


def main(preset: str, batch: int, steps: int, text_tokens: int, dtype: str) -> None:
    config = benchmark_config(sd3_model(preset, dtype=dtype))
    family = family_from_config(config)
    cfg = family.config
    s = cfg.sample_size
    data = random_batch(family, batch, s, text_tokens)
    x, cond = data["x"], data["cond"]
    null = jax.tree_util.tree_map(jnp.zeros_like, cond)
    variables = jax.jit(family.init)(jax.random.PRNGKey(3), x, cond)
    model = TrainedModel(config, family, variables, step=0, data=None, data_shape=tuple(x.shape[1:]), text=None)
    pipe = SamplingPipeline(model, sampler={"name": "flow_euler", "n_steps": steps}, guidance_scale=GUIDANCE,
                            negative="null")

    prepared = jax.jit(family.prepare)(variables)  # the pipeline prepares once per program, outside its loop
    guided = classifier_free_guidance(lambda v, x, t, c: family.net(v, c)(x, t), GUIDANCE)
    one_call = jax.jit(lambda v, x, t: guided(v, x, t, (cond, null)))
    t_call, _ = time_compiled(one_call, prepared, x, jnp.full((batch,), 0.5), repeats=10)

    @jax.jit
    def nfe_loop(v, x):
        # .astype: in bf16 the model returns bf16 while the loop carries fp32 latents (as the samplers do).
        body = lambda i, x: guided(v, x, jnp.full((batch,), 0.5), (cond, null)).astype(x.dtype)  # noqa: E731
        return jax.lax.fori_loop(0, steps, body, x)

    t_loop, _ = time_compiled(nfe_loop, prepared, x, repeats=3)
    sample = lambda key: pipe.sample(cond, key, variables=variables, negative=null)  # noqa: E731
    t_sample, compile_s = time_compiled(sample, jax.random.PRNGKey(5), repeats=3)
    table = (
        f"Preset `{preset}` (D = {cfg.hidden}, {cfg.num_layers} layers), {dtype}, batch {batch} (x2 for CFG), "
        f"{s}x{s}x{cfg.in_channels}, {text_tokens} text tokens; SamplingPipeline, flow Euler, NFE = {steps}, "
        f"shift {family.schedule.shift}, CFG {GUIDANCE}.\n\n"
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
