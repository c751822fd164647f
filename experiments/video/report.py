"""The tables of RESULTS.md from ``results.json``: mean ± standard deviation over sampling seeds.

    python -m experiments.video.report [experiments/video/results.json]

1. 8-frame clips (the training length): motion, per-frame adherence, consistency, flicker, Fréchet distance per
   method, with the real test clips as the ceiling;
2. 16-frame clips (twice the training length) and image-to-video.
"""

from __future__ import annotations

import json
import sys

import numpy as np

COLUMNS = (("motion_direction", "direction ↑"), ("motion_speed", "speed ↑"), ("motion_both", "motion ↑"),
           ("adherence_shape", "shape ↑"), ("adherence_colour", "colour ↑"), ("adherence_size", "size ↑"),
           ("subject_consistency", "consistency"), ("flicker", "flicker ↓"), ("frechet", "Fréchet ↓"))
NAMES = {"joint": "joint (whole clip)", "next_chunk": "frame-by-frame (next chunk)",
         "per_frame": "image model per frame", "next_chunk_16": "frame-by-frame, 16 frames",
         "joint_16": "joint, asked for 16 frames", "image_to_video": "image-to-video (frame-by-frame)"}


def cell(values: list[float] | float | None) -> str:
    if values is None:
        return "—"
    if not isinstance(values, list):
        return f"{values:.3f}"
    values = [v for v in values if v == v]
    if not values:
        return "—"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def table(results: dict, rows: tuple[str, ...], with_real: bool) -> str:
    head = "| method | " + " | ".join(c for _, c in COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS)
    lines = [head]
    if with_real:
        real = results["real"]
        lines.append("| real test clips | " + " | ".join(cell(real.get(k)) for k, _ in COLUMNS) + " |")
    for name in rows:
        row = results["methods"].get(name)
        if row is not None:
            lines.append(f"| {NAMES[name]} | " + " | ".join(cell(row.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main(path: str = "experiments/video/results.json") -> None:
    with open(path) as f:
        results = json.load(f)
    print("### 8-frame clips (training length)\n")
    print(table(results, ("joint", "next_chunk", "per_frame"), True))
    print("\n### 16-frame clips and image-to-video\n")
    print(table(results, ("next_chunk_16", "joint_16", "image_to_video"), False))


if __name__ == "__main__":
    main(*sys.argv[1:])
