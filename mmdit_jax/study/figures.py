"""Figures of the study: labelled image grids (columns = conditions) and metric-vs-x line plots.

Drawn on ``matplotlib.figure.Figure`` objects, not through pyplot, so importing this module leaves a notebook's
inline backend alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure


def panel_grid(columns: dict[str, np.ndarray], path: str, row_labels: Sequence[str] | None = None) -> None:
    """``columns = {title: images (R, H, W, 3) uint8}`` -> one PNG, a column per condition and a row per scene."""
    titles = list(columns)
    rows = len(next(iter(columns.values())))
    fig = Figure(figsize=(1.6 * len(titles), 1.6 * rows + 0.4))
    axes = fig.subplots(rows, len(titles), squeeze=False)
    for j, title in enumerate(titles):
        for i in range(rows):
            ax = axes[i, j]
            ax.imshow(columns[title][i], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
            if j == 0 and row_labels:
                ax.set_ylabel(row_labels[i], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def line_plot(x: Sequence[float], series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
              ylabel: str, path: str, title: str = "") -> None:
    """``series = {label: (mean, std)}`` over ``x``, with error bars."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    for label, (mean, std) in series.items():
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
