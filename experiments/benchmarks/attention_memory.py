"""Linear-memory attention on CPU: compiled temporary memory and wall time of attention forward + backward over
sequence lengths, for the dense paths (``jax.nn.dot_product_attention``'s XLA path; ``einsum_attention`` with
autodiff and with its hand-written gradient) and ``chunked_attention`` (both of its gradients).

Memory is XLA's own account of the compiled program (``memory_analysis().temp_size_in_bytes``: every buffer
that is neither an argument nor an output), so it is exact and independent of the allocator; time is the median
and minimum wall time of the compiled forward + backward (``out, dq, dk, dv``), all variants interleaved round by
round so a slow moment of a shared machine does not fall on one variant only.

Run: ``python experiments/benchmarks/attention_memory.py [--lengths 1024,2048,4096,8192 --heads 2 --head_dim 64]``
(about 2 minutes on a 2-core CPU); the table is appended to ARCHIVE.md as "Linear-memory attention on CPU" (RESULTS.md
holds the curated summary).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.benchmarks.common import append_results, parse_args  # noqa: E402
from mmdit_jax.models.chunked_attention import KEY_CHUNK, QUERY_CHUNK, chunked_attention  # noqa: E402
from mmdit_jax.models.layers import einsum_attention  # noqa: E402

Array = jax.Array

# name -> attention (B, L, H, d)^3 -> (B, L, H, d); the einsum paths with the model's default 4 head groups.
VARIANTS: dict[str, Callable[[Array, Array, Array], Array]] = {
    "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
    "einsum": lambda q, k, v: einsum_attention([(q, k, v)], groups=4)[0],
    "einsum_vjp": lambda q, k, v: einsum_attention([(q, k, v)], custom_gradient=True, groups=4)[0],
    "chunked (autodiff)": functools.partial(chunked_attention, custom_gradient=False),
    "chunked (custom_vjp)": functools.partial(chunked_attention, custom_gradient=True),
}


def forward_backward(attention: Callable[[Array, Array, Array], Array]) -> Callable[..., Any]:
    """``(q, k, v, do) -> (o, dq, dk, dv)``: the attention and its gradients for the output cotangent ``do``."""
    def step(q: Array, k: Array, v: Array, do: Array) -> tuple[Array, ...]:
        o, vjp = jax.vjp(attention, q, k, v)
        return (o, *vjp(do))
    return jax.jit(step)


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo ('unknown' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="1024,2048,4096,8192", help="sequence lengths, comma-separated")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head_dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="timed calls per variant (interleaved)")
    args = parse_args(ap)
    load_before = os.getloadavg()[0]
    rows = []
    for length in (int(s) for s in args.lengths.split(",")):
        shape = (args.batch, length, args.heads, args.head_dim)
        inputs = [jnp.asarray(np.random.default_rng(i).standard_normal(shape), jnp.float32) for i in range(4)]
        compiled, temp, compile_s = {}, {}, {}
        for name, attention in VARIANTS.items():
            start = time.perf_counter()
            compiled[name] = forward_backward(attention).lower(*inputs).compile()
            compile_s[name] = time.perf_counter() - start
            temp[name] = compiled[name].memory_analysis().temp_size_in_bytes
            jax.block_until_ready(compiled[name](*inputs))  # first run: page in the buffers
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, fn in compiled.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(*inputs))
                times[name].append(time.perf_counter() - start)
        dense = 4 * args.batch * args.heads * length * length  # one float32 (B, H, L, L) matrix
        for name in VARIANTS:
            rows.append(f"| {length} | {name} | {temp[name] / 2**20:,.1f} | {temp[name] / dense:.2f} | "
                        f"{1000 * np.median(times[name]):,.0f} | {1000 * min(times[name]):,.0f} | "
                        f"{compile_s[name]:.1f} |")
            print(rows[-1], flush=True)
        del compiled, inputs
    table = (f"CPU: {cpu_model()} (`nproc` = {os.cpu_count()}); JAX {jax.__version__}. Attention forward + backward "
             f"(`o, dq, dk, dv`), float32, B = {args.batch}, H = {args.heads}, d = {args.head_dim}; chunked with "
             f"query / key chunks of {QUERY_CHUNK} / {KEY_CHUNK}. Temp: XLA's `memory_analysis().temp_size_in_bytes` "
             "of the compiled program; 'x dense' divides it by the bytes of one float32 (B, H, L, L) score matrix. "
             f"Time: median and minimum of {args.rounds} interleaved calls; 1-minute load average "
             f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes share the cores, so the "
             "minimum is the better estimate of an idle machine).\n\n"
             "| L | attention | temp, MiB | x dense | fwd+bwd median, ms | min, ms | compile, s |\n"
             "|---|---|---|---|---|---|---|\n"
             + "\n".join(rows))
    append_results("Linear-memory attention on CPU", table)


if __name__ == "__main__":
    main()
