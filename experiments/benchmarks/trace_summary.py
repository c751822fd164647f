"""Where an accelerator's time goes in a profiled run: device busy fraction and kernel time by kind.

Reads the ``perfetto_trace.json.gz`` that ``jax.profiler.trace(..., create_perfetto_trace=True)`` writes and
sums the kernels of the device processes (``/device:GPU:0`` ...): the union of their intervals over the traced
window (busy fraction: what launch gaps and host waits leave idle), time per kind (matmul, attention, reduction
fusion, elementwise fusion, copy / slice, other) and the kernels that take the most time, with the HLO op that
launched them. Run: ``python experiments/benchmarks/trace_summary.py TRACE [--top 25]``.

XLA:CPU: with ``--xla_cpu_enable_xprof_traceme=true`` in ``XLA_FLAGS`` (``profile_step.py`` sets it) each HLO op
(thunk) is an event on XLA's worker threads, named after the instruction (``ynn_fusion.12``: a YNNPACK library
fusion, i.e. a product, possibly with its epilogue). Those events are used when a trace has no device kernels.
Read them as wall time per op: ops that run concurrently share the cores, and XLA's generic dot runtime
(``dot.N``) finishes asynchronously, so its events understate it. Under ``taskset -c 0`` they are core time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.benchmarks.hlo_ops import hlo_ops  # noqa: E402

KINDS = (  # first match wins; matched against "kernel name | hlo op | hlo category"
    ("attention", re.compile(r"fmha|flash|cudnn|attention|sdpa|softmax", re.I)),
    ("matmul", re.compile(r"gemm|xmma|nvjet|cutlass|cublas|matmul|(?<![a-z])dot(?![a-z])|wgmma|ynn_fusion|"
                          r"xnn_fusion|onednn", re.I)),
    ("copy / slice", re.compile(r"copy|transpose|dynamic.update.slice|dynamic.slice|memcpy|memset|concatenate|"
                                r"(?<![a-z])pad(?![a-z])", re.I)),
    ("reduction fusion", re.compile(r"reduce|reduction|input_fusion|row_reduction", re.I)),
    ("elementwise fusion", re.compile(r"fusion|loop_|elementwise", re.I)),
)


def kind_of(label: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(label):
            return kind
    return "other"


def load_events(path: str) -> list[dict]:
    with gzip.open(path, "rt") if path.endswith(".gz") else open(path) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


# XLA:CPU runtime bookkeeping on the worker threads, not HLO ops.
_CPU_RUNTIME = re.compile(r"^(ThreadpoolListener|ThunkExecutor|SlinkyThreadPool|Wait for|end: )")


def cpu_ops(events: list[dict]) -> list[dict]:
    """XLA:CPU's per-op events (``--xla_cpu_enable_xprof_traceme``): complete events on its worker threads
    (``tf_XLAEigen...``) that name an HLO instruction."""
    workers = {(e["pid"], e.get("tid")) for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
               and e.get("args", {}).get("name", "").startswith("tf_XLAEigen")}
    return [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in workers
            and e.get("dur", 0) > 0 and not _CPU_RUNTIME.match(e["name"])]


def device_kernels(events: list[dict]) -> list[dict]:
    """Complete ("X") events of device processes; the host's (Python, runtime) are left out. A trace without
    any (XLA:CPU) gives its per-op events instead (``cpu_ops``)."""
    names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in names.items() if "/device:" in name and "CPU" not in name}
    kernels = [e for e in events if e.get("ph") == "X" and e.get("pid") in devices and e.get("dur", 0) > 0]
    return kernels or cpu_ops(events)


def busy_time(kernels: list[dict]) -> float:
    """Microseconds during which at least one kernel ran (union over all streams)."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in kernels)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def by_source_op(kernels: list[dict], ops: dict[str, tuple[str, int]], top: int, steps: int) -> list[str]:
    """Markdown table: traced time and FLOP rate per source op (``hlo_ops``), layers merged (``blocks_*``)."""
    rows: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0, 0.0])
    for e in kernels:
        source, flops = ops.get(e["name"], ("", 0))
        row = rows[re.sub(r"(blocks?)_\d+", r"\1_*", source.removeprefix("jit(step)/")) or f"({e['name']})"]
        row[0] += e["dur"]
        row[1] += 1
        row[2] += flops
    lines = ["", f"Top {top} source ops (layers merged; GFLOP/s over the traced time):", "",
             "| source op | ms per step | ops per step | GFLOP per step | GFLOP/s |", "|---|---|---|---|---|"]
    for source, (t, n, flops) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:top]:
        rate = f"{flops / t / 1e3:.0f}" if flops else ""
        lines.append(f"| `{source[:110]}` | {t / 1e3 / steps:.2f} | {n / steps:.0f} | {flops / 1e9 / steps:.2f} "
                     f"| {rate} |")
    return lines


def summarise(path: str, top: int = 25, steps: int = 1, hlo_text: str | None = None) -> str:
    """Markdown tables: busy fraction, time per kind, the ``top`` kernels (times per step when ``steps`` traced);
    with the optimised HLO's text (``hlo_text``), also time and FLOP rate per source op."""
    kernels = device_kernels(load_events(path))
    if not kernels:
        return (f"No device kernels in {path} (on a CPU, XLA traces its ops only with "
                "--xla_cpu_enable_xprof_traceme=true in XLA_FLAGS).")
    window = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    busy = busy_time(kernels)
    per_kind: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    per_kernel: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in kernels:
        args = e.get("args", {})
        op = str(args.get("hlo_op", args.get("long_name", "")))
        label = f"{e['name']} | {op} | {args.get('hlo_category', '')}"
        k = kind_of(label)
        per_kind[k][0] += e["dur"]
        per_kind[k][1] += 1
        kernel = per_kernel[(k, f"{e['name'][:70]} ({op[:40]})")]
        kernel[0] += e["dur"]
        kernel[1] += 1
    total = sum(v[0] for v in per_kind.values())
    lines = [f"{len(kernels)} kernels over {steps} step(s); traced window {window / 1e3 / steps:.1f} ms per step, "
             f"device busy {busy / 1e3 / steps:.1f} ms per step ({busy / window:.1%}); kernel time summed over "
             f"streams {total / 1e3 / steps:.1f} ms per step.", "",
             "| kind | ms per step | share of kernel time | kernels per step |", "|---|---|---|---|"]
    for k, (t, n) in sorted(per_kind.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {k} | {t / 1e3 / steps:.2f} | {t / total:.1%} | {n / steps:.0f} |")
    lines += ["", f"Top {top} kernels (name (HLO op)):", "", "| kind | kernel | ms per step | calls per step |",
              "|---|---|---|---|"]
    for (k, name), (t, n) in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {k} | `{name}` | {t / 1e3 / steps:.2f} | {n / steps:.0f} |")
    if hlo_text is not None:
        lines += by_source_op(kernels, hlo_ops(hlo_text), top, steps)
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", help="perfetto_trace.json.gz from jax.profiler.trace(create_perfetto_trace=True)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--steps", type=int, default=1, help="steps inside the trace (times are divided by it)")
    ap.add_argument("--hlo", help="the traced module's *after_optimizations.txt (XLA_FLAGS=--xla_dump_to=DIR "
                                  "--xla_dump_hlo_as_text): adds time and FLOP rate per source op")
    a = ap.parse_args()
    print(summarise(a.trace, a.top, a.steps, open(a.hlo).read() if a.hlo else None))
