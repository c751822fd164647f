"""Ground-truth attributes of ``shapes`` scenes: the label space, generated labelled images, caption parsing.

An attribute is one of ``ATTRIBUTES`` (shape, colour, size, position) with ids indexing ``captions.SHAPES`` etc.
Captions are parsed back to the attributes they *mention*: "red circle" mentions colour and shape only.
"""

from __future__ import annotations

import re

import numpy as np

from mmdit_jax.data.captions import COLOURS, POSITIONS, SHAPES, SIZES
from mmdit_jax.data.shapes import example

ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}


def labelled_images(n: int, seed: int, image_size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(images (n, H, W, 3) uint8, {attribute: ids (n,)})`` of single-object scenes from stream ``seed``."""
    rows = [example(i, seed, image_size, max_objects=1) for i in range(n)]
    return np.stack([r["image"] for r in rows]), {a: np.array([r[a] for r in rows]) for a in ATTRIBUTES}


def parse_caption(text: str) -> dict[str, int]:
    """Attributes a single-object caption mentions: ``{attribute: id}``.

    Positions are matched longest first ("top left" before "top"); "in the top" is the cell, not a word.
    """
    found: dict[str, int] = {}
    lowered = text.lower()
    for name, values in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES)):
        for i, v in enumerate(values):
            if re.search(rf"\b{v}\b", lowered):
                found[name] = i
                break
    for p in sorted(POSITIONS, key=len, reverse=True):
        if re.search(rf"\bthe {p}\b", lowered):
            found["position"] = POSITIONS.index(p)
            break
    return found
