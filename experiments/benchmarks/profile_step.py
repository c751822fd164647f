"""Profile of the MMDiT train step (the trainer's ``make_train_step``, built by ``mfu.py`` with the same flags):
step time and MFU, then a ``jax.profiler`` trace of a few steps summarised by ``trace_summary`` (device busy
fraction, kernel time by kind, top kernels, and per source op from the optimised HLO dump of ``jit_step``): where
the time above the matmul floor goes. On a CPU the script turns on XLA's per-op trace events
(``--xla_cpu_enable_xprof_traceme=true``, which costs the step a little); run it under ``taskset -c 0`` as well to
read each op's core time (``trace_summary``'s docstring says how to read CPU traces).

Run: ``python experiments/benchmarks/profile_step.py --preset sd3_medium --size 64 --tokens 333 --dtype bfloat16
--scan_blocks --trace_dir runs/profile``; the trace stays in ``--trace_dir`` (open it in ui.perfetto.dev).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.benchmarks.common import (  # noqa: E402
    append_results, device_peak_memory, matmul_peak, parse_args, time_compiled)
from experiments.benchmarks.mfu import add_step_args, remat_label, step_from_args  # noqa: E402
from experiments.benchmarks.trace_summary import summarise  # noqa: E402


def main(a: argparse.Namespace) -> None:
    run, flops = step_from_args(a)
    t_step, compile_s = time_compiled(run)
    memory = device_peak_memory()
    peak = matmul_peak(jnp.dtype(a.dtype))
    mfu = (f"Train step {t_step * 1e3:.1f} ms (compile {compile_s:.1f} s), MFU {flops / t_step / peak:.1%} of a "
           f"measured {peak / 1e12:.1f} TFLOP/s; device memory peak {memory}")
    print(mfu, flush=True)  # kept if the profiler fails (e.g. no CUPTI access)
    with jax.profiler.trace(a.trace_dir, create_perfetto_trace=True):
        for _ in range(a.steps):
            jax.block_until_ready(run())
    trace = sorted(glob.glob(os.path.join(a.trace_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)[-1]
    dumps = sorted(glob.glob(os.path.join(a.trace_dir, "hlo", "*jit_step*after_optimizations.txt")),
                   key=os.path.getmtime)
    hlo = open(dumps[-1]).read() if dumps else None  # names each traced op's source op and FLOPs
    table = (f"The trainer's step (make_train_step). Preset `{a.preset}`, attention_impl={a.attention_impl}, attention_head_groups="
             f"{a.attention_head_groups or 'preset'}, scan_blocks={a.scan_blocks}, scan_unroll={a.scan_unroll}, "
             f"remat={remat_label(a)}, "
             f"kernels cast once={not a.no_cast}, batch {a.batch}, {a.size}x{a.size}, {a.tokens} text tokens, "
             f"{a.dtype}; XLA_FLAGS={os.environ.get('XLA_FLAGS') or '(none)'}. {mfu}; {a.steps} steps traced "
             f"(`{os.path.relpath(trace)}`).\n\n" + summarise(trace, a.top, a.steps, hlo) + "\n")
    print(table)
    append_results("MMDiT train-step profile", table)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    add_step_args(ap)
    ap.add_argument("--steps", type=int, default=2, help="steps inside the trace")
    ap.add_argument("--top", type=int, default=30, help="kernels listed")
    ap.add_argument("--trace_dir", default="runs/profile")
    a = parse_args(ap)
    os.environ["XLA_FLAGS"] = " ".join([  # read when JAX starts, i.e. at the first computation in main
        os.environ.get("XLA_FLAGS", ""), "--xla_cpu_enable_xprof_traceme=true",  # XLA:CPU's per-op trace events
        f"--xla_dump_to={os.path.join(a.trace_dir, 'hlo')} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=jit_step",
    ]).strip()
    main(a)
