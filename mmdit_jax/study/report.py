"""What every study experiment writes: results.json and RESULTS.md (the body names the machine, with
``mmdit_jax.reporting.machine()``, and the commands), with the hand-written reading appended."""

from __future__ import annotations

import json
import os

import numpy as np


def fmt(stats: tuple[float, float] | list[float], digits: int = 3) -> str:
    mean, std = stats
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write(outdir: str, name: str, results: dict, body: str) -> None:
    """Write ``results.json`` and ``RESULTS.md``; a hand-written ``reading.md`` in ``outdir`` is appended."""
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=lambda v: np.asarray(v).tolist())
    reading_path = os.path.join(outdir, "reading.md")
    reading = open(reading_path).read() if os.path.exists(reading_path) else "_(no reading.md yet)_\n"
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write(f"# {name}\n\n{body}\n\n## Reading\n\n{reading}")
