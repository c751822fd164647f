"""Where an accelerator's time goes in a profiled run: device busy fraction and kernel time by kind.

Reads the ``perfetto_trace.json.gz`` that ``jax.profiler.trace(..., create_perfetto_trace=True)`` writes and
sums the kernels of the device processes (``/device:GPU:0`` ...): the union of their intervals over the traced
window (busy fraction: what launch gaps and host waits leave idle), time per kind (matmul, attention, reduction
fusion, elementwise fusion, copy / slice, other) and the kernels that take the most time, with the HLO op that
launched them. Run: ``python experiments/benchmarks/trace_summary.py TRACE [--top 25]``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re

KINDS = (  # first match wins; matched against "kernel name | hlo op | hlo category"
    ("attention", re.compile(r"fmha|flash|cudnn|attention|sdpa|softmax", re.I)),
    ("matmul", re.compile(r"gemm|xmma|nvjet|cutlass|cublas|matmul|(?<![a-z])dot(?![a-z])|wgmma", re.I)),
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


def device_kernels(events: list[dict]) -> list[dict]:
    """Complete ("X") events of device processes; the host's (Python, runtime) are left out."""
    names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in names.items() if "/device:" in name and "CPU" not in name}
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in devices and e.get("dur", 0) > 0]


def busy_time(kernels: list[dict]) -> float:
    """Microseconds during which at least one kernel ran (union over all streams)."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in kernels)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarise(path: str, top: int = 25, steps: int = 1) -> str:
    """Markdown tables: busy fraction, time per kind, the ``top`` kernels (times per step when ``steps`` traced)."""
    kernels = device_kernels(load_events(path))
    if not kernels:
        return f"No device kernels in {path} (a CPU trace has none: XLA:CPU ops are not traced per kernel)."
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
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", help="perfetto_trace.json.gz from jax.profiler.trace(create_perfetto_trace=True)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--steps", type=int, default=1, help="steps inside the trace (times are divided by it)")
    a = ap.parse_args()
    print(summarise(a.trace, a.top, a.steps))
