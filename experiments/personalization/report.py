"""The tables of RESULTS.md from ``results.json``: per subject and variant, the mean over seeds (and each seed's
value), then the mean over subjects.

    python -m experiments.personalization.report [experiments/personalization/results.json]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np

COLUMNS = (("subject_fidelity", "subject fidelity ↑"), ("subject_rate", "subject rate ↑"),
           ("prompt_fidelity", "prompt fidelity ↑"), ("context_subject_rate", "subject kept in contexts ↑"),
           ("pres", "PRES (drift) ↓"), ("class_shape_accuracy", "class prompt: right shape ↑"),
           ("diversity", "diversity ↑"))


def tables(results: dict) -> str:
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for key, scores in results["runs"].items():
        subject, variant, _ = key.split("/")
        runs[(subject, variant)].append(scores)
    head = "| subject | variant | " + " | ".join(c for _, c in COLUMNS) + " |\n|---|---|" + "---|" * len(COLUMNS)
    rows = []
    for (subject, variant), scores in runs.items():
        cells = []
        for key, _ in COLUMNS:
            values = [s[key] for s in scores]
            cell = f"{np.mean(values):.2f}"
            if len(values) > 1:
                cell += " (" + ", ".join(f"{v:.2f}" for v in values) + ")"
            cells.append(cell)
        rows.append(f"| {subject} | {variant} | " + " | ".join(cells) + " |")
    variants = sorted({v for _, v in runs}, key=lambda v: (v != "base", v))
    mean_rows = []
    for variant in variants:
        scores = [s for (_, v), ss in runs.items() if v == variant for s in ss]
        mean_rows.append(f"| all | {variant} | " + " | ".join(
            f"{np.mean([s[k] for s in scores]):.2f}" for k, _ in COLUMNS) + " |")
    return head + "\n" + "\n".join(rows) + "\n\nMean over subjects and seeds:\n\n" + head + "\n" + "\n".join(mean_rows)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "experiments/personalization/results.json"
    with open(path) as f:
        print(tables(json.load(f)))


if __name__ == "__main__":
    main()
