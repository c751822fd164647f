"""Samples as pictures: image grids and 2D scatter plots, ``(H, W, 3) uint8`` for PNG files and TensorBoard."""

from __future__ import annotations

import numpy as np


def to_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """``(N, H, W, 3)`` in [-1, 1] -> one uint8 image of ``rows`` rows with a 1-pixel grey border."""
    imgs = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    n, h, w, c = imgs.shape
    cols = int(np.ceil(n / rows))
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 64, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = imgs[i]
    return grid


def scatter(points: np.ndarray, rows: int = 1, extent: float = 8.0, size: int = 256) -> np.ndarray:
    """``(N, 2)`` points -> a ``size x size`` scatter plot of ``[-extent, extent]^2`` (``rows`` is unused: one panel)."""
    del rows
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = np.asarray(points, np.float32)
    fig, ax = plt.subplots(figsize=(size / 100, size / 100), dpi=100)
    ax.scatter(points[:, 0], points[:, 1], s=2)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image
