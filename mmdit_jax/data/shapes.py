"""The built-in ``shapes`` data: procedurally drawn, captioned images, deterministic by seed.

A scene has 1..max_objects objects, each a (shape, colour, size, position-cell) drawn anti-aliased on a black
background; the caption describes them with a random template (short to long). The ground-truth attributes
are returned with every image, for evaluators.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from mmdit_jax.data.captions import CAPTION_SETS, COLOURS, COLOUR_RGB, POSITIONS, SHAPES, SIZES, ShapeObject, caption

SIZE_FRACTION = {"small": 0.11, "medium": 0.16, "large": 0.22}   # object radius / image side (one object)

# (y, x) offsets from an object's centre in units of its radius (y down) -> bool: where a second colour goes.
Pattern = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Paint:
    """A fill other than the object's flat named colour: ``base_rgb`` (e.g. jittered), and ``pattern_rgb`` where
    ``pattern`` holds. Used for patterned subjects (``subjects.py``); the data set itself never passes one."""

    base_rgb: tuple[float, float, float]
    pattern: Pattern | None = None
    pattern_rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _cell_centre(position: str, size: int) -> tuple[float, float]:
    """Centres of a 3x3 grid inset by the largest radius, so no object is cut by the border."""
    row, col = divmod(POSITIONS.index(position), 3)
    margin = SIZE_FRACTION["large"] * size + 0.5
    step = (size - 2 * margin) / 2
    return margin + row * step, margin + col * step


def shape_mask(shape: str, size: int, centre: tuple[float, float], radius: float, supersample: int = 4,
               pattern: Pattern | None = None) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` (intersected with ``pattern`` if given) on a ``size x size`` grid
    (supersampled for anti-aliasing)."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    y, x = np.meshgrid(coords - centre[0], coords - centre[1], indexing="ij")
    r = radius
    if shape == "circle":
        m = x**2 + y**2 <= r**2
    elif shape == "square":
        m = (np.abs(x) <= 0.8 * r) & (np.abs(y) <= 0.8 * r)
    elif shape == "diamond":
        m = np.abs(x) + np.abs(y) <= r
    elif shape == "triangle":   # pointing up
        m = (y <= 0.8 * r) & (y >= -r + 2 * np.abs(x) * 0.9)
    elif shape == "cross":
        m = ((np.abs(x) <= 0.3 * r) & (np.abs(y) <= r)) | ((np.abs(y) <= 0.3 * r) & (np.abs(x) <= r))
    elif shape == "ring":
        d2 = x**2 + y**2
        m = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")
    if pattern is not None:
        m = m & pattern(y / r, x / r)
    return m.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def object_radius(size_name: str, size: int, crowded: bool) -> float:
    """Radius in pixels of an object of size ``size_name`` in a ``size x size`` image; ``crowded`` halves it (so
    several objects fit the 3x3 grid without touching)."""
    return SIZE_FRACTION[size_name] * size * (0.5 if crowded else 1.0) + 0.5


def render(objects: tuple[ShapeObject, ...], size: int = 32, paints: Sequence[Paint | None] | None = None,
           background: tuple[float, float, float] = (0, 0, 0), crowded: bool | None = None) -> np.ndarray:
    """``(size, size, 3)`` uint8 image of the objects on an RGB ``background``, later objects on top;
    ``paints[i]``, if given and not None, replaces object ``i``'s flat colour. ``crowded=None`` halves the radii
    when there is more than one object; ``True`` always halves them, so adding or removing an object leaves the
    others' pixels unchanged (the edit data), ``False`` never does."""
    img = np.empty((size, size, 3), np.float32)
    img[...] = np.asarray(background, np.float32)
    crowded = len(objects) > 1 if crowded is None else bool(crowded)
    for i, obj in enumerate(objects):
        radius = object_radius(obj.size, size, crowded)
        centre = _cell_centre(obj.position, size)
        cov = shape_mask(obj.shape, size, centre, radius)[..., None]
        paint = paints[i] if paints is not None else None
        if paint is None:
            img = img * (1 - cov) + cov * np.asarray(COLOUR_RGB[obj.colour], np.float32)
            continue
        # Exact coverage split (not a second layer on top): a pixel's pattern part is taken from its base part, so
        # the anti-aliased silhouette keeps the same edge whatever the pattern.
        pat = shape_mask(obj.shape, size, centre, radius, pattern=paint.pattern)[..., None] if paint.pattern \
            else np.zeros_like(cov)
        img = img * (1 - cov) + (cov - pat) * np.asarray(paint.base_rgb, np.float32) \
            + pat * np.asarray(paint.pattern_rgb, np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def sample_scene(rng: np.random.Generator, max_objects: int = 1) -> tuple[ShapeObject, ...]:
    """Random objects in distinct cells."""
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    return tuple(ShapeObject(SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))],
                             SIZES[rng.integers(len(SIZES))], POSITIONS[c]) for c in cells)


def example(index: int, seed: int, size: int = 32, max_objects: int = 1, captions: str = "full") -> dict:
    """Example ``index`` of the stream ``seed``: image, caption and attribute ids of the first object; the template
    is drawn uniformly from the caption set ``captions`` (``captions.CAPTION_SETS``)."""
    rng = np.random.default_rng([seed, index])
    objects = sample_scene(rng, max_objects)
    template = int(rng.integers(CAPTION_SETS[captions]))
    first = objects[0]
    return {
        "image": render(objects, size),
        "caption": caption(objects, template),
        "shape": SHAPES.index(first.shape), "colour": COLOURS.index(first.colour),
        "size": SIZES.index(first.size), "position": POSITIONS.index(first.position),
        "num_objects": len(objects), "template": template,
    }
