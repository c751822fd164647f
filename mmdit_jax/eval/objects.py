"""How many separate objects a ``shapes`` image shows: the connected pieces of its foreground.

A ``shapes`` image is flat-coloured objects on black. A sample that breaks draws one object as several disjoint
pieces or adds stray blobs, and the attribute classifier may still read the right shape and colour from the
largest piece; counting pieces catches what it misses. A piece is an 8-connected set of pixels whose brightest
channel exceeds ``threshold``, at least ``min_fraction`` of the image in area (smaller specks are anti-aliasing
noise: the smallest ``shapes`` object covers about 4% of the image).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def piece_counts(images: np.ndarray, threshold: int = 64, min_fraction: float = 0.002) -> np.ndarray:
    """``(B, H, W, 3)`` uint8 -> ``(B,)`` int: the number of foreground pieces of each image."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3), got shape {images.shape}")
    min_area = min_fraction * images.shape[1] * images.shape[2]
    counts = []
    for foreground in images.max(axis=-1) > threshold:
        labels, n = ndimage.label(foreground, structure=np.ones((3, 3), bool))
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        counts.append(int(np.sum(areas >= min_area)))
    return np.asarray(counts)


def one_object_rate(images: np.ndarray, **kwargs) -> float:
    """The share of images that show exactly one piece (``piece_counts``)."""
    return float(np.mean(piece_counts(images, **kwargs) == 1))
