"""The tables of RESULTS.md from ``results.json``: mean ± standard deviation over sampling seeds.

    python -m experiments.editing.report [experiments/editing/results.json]

1. single turn, per phrasing set: success, preservation, exact, pixel deviation per method;
2. per edit type (held-out phrasings): success / preservation of every method;
3. multi-turn drift: the fraction of the expected scene's attributes read after each turn, and exact scenes.
"""

from __future__ import annotations

import json
import sys

import numpy as np

METRICS = (("success", "success ↑"), ("preservation", "preservation ↑"), ("exact", "exact ↑"),
           ("pixel_deviation", "pixel deviation outside the edit ↓"))


def cell(values: list[float]) -> str:
    """``mean ± std`` over seeds (NaN-free values only)."""
    values = [v for v in values if v == v]
    if not values:
        return "—"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def single_turn_table(table: dict) -> str:
    head = "| method | " + " | ".join(c for _, c in METRICS) + " |\n|---|" + "---|" * len(METRICS)
    rows = [f"| {name} | " + " | ".join(cell(scores[k]) for k, _ in METRICS) + " |" for name, scores in table.items()]
    return head + "\n" + "\n".join(rows)


def per_type_table(table: dict, edit_types: list[str]) -> str:
    head = "| method | " + " | ".join(edit_types) + " |\n|---|" + "---|" * len(edit_types)
    rows = []
    for name, scores in table.items():
        cells = []
        for kind in edit_types:
            s, p = scores.get(f"{kind}/success"), scores.get(f"{kind}/preservation")
            cells.append("—" if s is None else f"{np.nanmean(s):.2f} / {np.nanmean(p):.2f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n" + "\n".join(rows)


def drift_table(multi: dict, key: str) -> str:
    turns = len(next(iter(multi.values()))[key][0])
    head = "| method | " + " | ".join(f"turn {t + 1}" for t in range(turns)) + " |\n|---|" + "---|" * turns
    rows = [f"| {name} | " + " | ".join(cell([seed[t] for seed in scores[key]]) for t in range(turns)) + " |"
            for name, scores in multi.items()]
    return head + "\n" + "\n".join(rows)


def tables(results: dict) -> str:
    parts = []
    for phrasing, table in results["single_turn"].items():
        parts.append(f"Single turn, {phrasing.replace('_', '-')} phrasings:\n\n" + single_turn_table(table))
    parts.append("Success / preservation per edit type (held-out phrasings):\n\n"
                 + per_type_table(results["single_turn"]["held_out"], results["edit_types"]))
    parts.append("Multi-turn: fraction of the expected scene's attributes read after each turn:\n\n"
                 + drift_table(results["multi_turn"], "attributes"))
    parts.append("Multi-turn: exact scenes after each turn:\n\n" + drift_table(results["multi_turn"], "exact"))
    return "\n\n".join(parts)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "experiments/editing/results.json"
    with open(path) as f:
        print(tables(json.load(f)))


if __name__ == "__main__":
    main()
