"""Edit evaluation on the ``shapes`` edit data (``data/edits.py``): read every attribute of a generated scene.

No learnt network: the scenes are drawn from a closed vocabulary at known places, so each attribute is read by
fitting the renderer's own model. Image x: (S, S, 3) uint8 (or float in [0, 255]).

  background  b = the BACKGROUNDS colour nearest (L2) the per-channel median m of the image's outermost pixel ring
              (no object reaches the border: cells are inset by the largest radius)
  cells       the image is cut into 3 x 3 windows at the midpoints between the grid's cell centres; every
              object of the crowded scale lies inside its own cell's window (tested)
  colour      a pixel of an object of colour C on m is p = m + a (C - m), a = its coverage; for each palette
              colour k, a_k = clip((p - m).(C_k - m) / |C_k - m|^2, 0, 1) and the window's residual
              r_k = sum_pixels |p - m - a_k (C_k - m)|^2; the colour is argmin_k r_k (partly covered rim pixels
              count too: a small ring has no fully covered pixel)
  shape, size the coverage map a (window-shaped) of that colour is matched (nearest in L2) against the 18
              crowded-scale coverage templates of every (shape, size) rendered at that cell (``shapes.shape_mask``
              with ``shapes.object_radius``) and the empty template (all zero): the empty one means no object.

Scores of one generated image g for a record with source scene s, edit e and target scene t:

  success        1 if the instructed change is read: recolour / reshape / resize: the object read at the edited
                 cell has the new value of that attribute; move: an object with the moved object's shape, colour
                 and size at the new cell and the old cell empty; remove: the cell empty; add: the new object read
                 at its cell with all its attributes; background: the new background. Else 0.
  preservation   the fraction of the attributes the instruction does not mention that are read unchanged: every
                 other object's presence at its cell, shape, colour and size (4 each); for recolour / reshape /
                 resize also the edited object's two other attributes; the background (unless edited); and "no
                 extra object" (no object read in a cell empty in both s and t) as one attribute
  exact          1 if the read scene (objects as a set, background) equals t
  pixel_deviation  mean over pixels outside the edit region R and over channels of |g - render(s)| / 255, in
                 [0, 1]; R = pixels where render(s) and render(t) differ, dilated by one pixel (3 x 3) so a
                 redrawn object's anti-aliased rim is not counted; for a background edit R is those pixels
                 undilated (everything but the fully covered object pixels, on which it is then measured). NaN
                 if R is the whole image (batch means skip NaN).

Multi-turn drift (``scene_scores``) against an expected scene t: ``attributes`` = the fraction of t's attributes
read correctly (presence, shape, colour, size per object; the background; no extra object), ``exact`` as above,
``pixel_deviation`` = mean |g - render(t)| / 255 over all pixels and channels.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.data.captions import COLOURS, COLOUR_RGB, POSITIONS, SHAPES, SIZES, ShapeObject
from mmdit_jax.data.edits import BACKGROUND_NAMES, BACKGROUNDS, EDIT_TYPES, Edit, Scene, record_scenes, render_scene
from mmdit_jax.data.shapes import _cell_centre, object_radius, shape_mask

_PALETTE = np.array([COLOUR_RGB[c] for c in COLOURS], np.float32)                     # (8, 3)
_BACKGROUND_RGB = np.array([BACKGROUNDS[b] for b in BACKGROUND_NAMES], np.float32)    # (5, 3)
_KINDS = tuple(itertools.product(SHAPES, SIZES))                                      # template order
_FIELD = {"recolour": "colour", "reshape": "shape", "resize": "size"}


def _bands(size: int) -> list[slice]:
    """Row (= column) ranges of the three grid bands: cut at the midpoints between cell centres."""
    centres = [_cell_centre(POSITIONS[r * 3], size)[0] for r in range(3)]
    cuts = [0] + [int(np.ceil((a + b) / 2 - 0.5)) for a, b in zip(centres, centres[1:])] + [size]
    return [slice(lo, hi) for lo, hi in zip(cuts, cuts[1:])]


@functools.lru_cache(maxsize=8)
def cell_windows(size: int) -> tuple[tuple[slice, slice], ...]:
    """The 9 cells' ``(rows, cols)`` windows of a ``size x size`` image, in POSITIONS order."""
    bands = _bands(size)
    return tuple((bands[i // 3], bands[i % 3]) for i in range(len(POSITIONS)))


@functools.lru_cache(maxsize=8)
def templates(size: int) -> tuple[np.ndarray, ...]:
    """Per cell, ``(19, h*w)`` float32 coverage templates: row 0 empty, then every (shape, size) of ``_KINDS``."""
    out = []
    for cell, (rows, cols) in zip(POSITIONS, cell_windows(size)):
        centre = _cell_centre(cell, size)
        full = [shape_mask(s, size, centre, object_radius(z, size, True)) for s, z in _KINDS]
        if any(f.sum() > f[rows, cols].sum() for f in full):
            # At some sizes (e.g. <= 26, 28, 29, 31, 34) the largest objects of neighbouring cells share pixels.
            raise ConfigError(f"image size {size} lets neighbouring objects share pixels, so scenes cannot be read "
                              f"cell by cell; valid sizes include 27, 30, 32, 33 and 35 and above")
        t = [f[rows, cols].ravel() for f in full]
        out.append(np.stack([np.zeros_like(t[0])] + t).astype(np.float32))
    return tuple(out)


def _as_image(image: Any) -> np.ndarray:
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] != x.shape[1]:
        raise ConfigError(f"image must have shape (S, S, 3), got {x.shape}")
    return x.astype(np.float32)


def read_scene(image: Any) -> Scene:
    """The scene read from a ``(S, S, 3)`` uint8 image (objects in POSITIONS order), as in the module docstring."""
    x = _as_image(image)
    size = x.shape[0]
    ring = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    m = np.median(ring, axis=0)
    background = BACKGROUND_NAMES[int(np.argmin(((_BACKGROUND_RGB - m) ** 2).sum(-1)))]
    d = _PALETTE - m                                                                     # (8, 3)
    objects = []
    for cell, (rows, cols), temps in zip(POSITIONS, cell_windows(size), templates(size)):
        p = x[rows, cols].reshape(-1, 3) - m                                             # (n, 3)
        a = np.clip(p @ d.T / (d * d).sum(-1), 0.0, 1.0)                                 # (n, 8)
        residual = ((p[:, None, :] - a[..., None] * d) ** 2).sum((0, 2))                 # (8,)
        k = int(np.argmin(residual))
        j = int(np.argmin(((temps - a[:, k]) ** 2).sum(-1)))
        if j > 0:
            shape, sz = _KINDS[j - 1]
            objects.append(ShapeObject(shape, COLOURS[k], sz, cell))
    return Scene(tuple(objects), background)


def _cells(scene: Scene) -> dict[str, ShapeObject]:
    return {o.position: o for o in scene.objects}


def _same_scene(a: Scene, b: Scene) -> bool:
    return a.background == b.background and _cells(a) == _cells(b) and len(a.objects) == len(b.objects)


def _object_checks(read: dict[str, ShapeObject], obj: ShapeObject, fields: Sequence[str]) -> list[bool]:
    got = read.get(obj.position)
    return [got is not None and getattr(got, f) == getattr(obj, f) for f in fields]


def _success(read: Scene, source: Scene, edit: Edit) -> bool:
    cells = _cells(read)
    if edit.type == "background":
        return read.background == edit.value
    if edit.type == "add":
        return cells.get(edit.value.position) == edit.value
    old = source.objects[edit.index]
    if edit.type == "remove":
        return old.position not in cells
    if edit.type == "move":
        got = cells.get(edit.value)
        return (got is not None and (got.shape, got.colour, got.size) == (old.shape, old.colour, old.size)
                and old.position not in cells)
    got = cells.get(old.position)
    return got is not None and getattr(got, _FIELD[edit.type]) == edit.value


def _preservation(read: Scene, source: Scene, edit: Edit, target: Scene) -> float:
    cells = _cells(read)
    checks: list[bool] = []
    for i, obj in enumerate(source.objects):
        if i != edit.index:
            checks += [obj.position in cells] + _object_checks(cells, obj, ("shape", "colour", "size"))
        elif edit.type in _FIELD:
            checks += _object_checks(cells, obj, [f for f in ("shape", "colour", "size") if f != _FIELD[edit.type]])
    if edit.type != "background":
        checks.append(read.background == source.background)
    occupied = set(_cells(source)) | set(_cells(target))
    checks.append(not any(c not in occupied for c in cells))
    return float(np.mean(checks))


def _dilate(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def edit_region(source_image: np.ndarray, target_image: np.ndarray, background_edit: bool) -> np.ndarray:
    """``(S, S)`` bool: where the source and target renders differ, dilated by one pixel unless a background
    edit."""
    region = np.any(np.asarray(source_image) != np.asarray(target_image), axis=-1)
    return region if background_edit else _dilate(region)


def edit_scores(generated: Any, record: dict) -> dict[str, float]:
    """``success``, ``preservation``, ``exact``, ``pixel_deviation`` of one ``(S, S, 3)`` generated image for an
    edit record (``edits.edit_example``), as in the module docstring."""
    g = _as_image(generated)
    source, edit, target = record_scenes(record)
    src, tgt = np.asarray(record["source"]), np.asarray(record["image"])
    if src.shape != g.shape:
        raise ConfigError(f"generated image has shape {g.shape}, the record's images {src.shape}")
    read = read_scene(g)
    keep = ~edit_region(src, tgt, edit.type == "background")
    deviation = float(np.abs(g - src)[keep].mean() / 255.0) if keep.any() else float("nan")
    return {"success": float(_success(read, source, edit)), "preservation": _preservation(read, source, edit, target),
            "exact": float(_same_scene(read, target)), "pixel_deviation": deviation}


def scene_scores(generated: Any, expected: Scene, reference_image: Any = None) -> dict[str, float]:
    """``attributes``, ``exact``, ``pixel_deviation`` of a ``(S, S, 3)`` image against the expected scene (its
    render unless ``reference_image`` is given), as in the module docstring."""
    g = _as_image(generated)
    ref = render_scene(expected, g.shape[0]) if reference_image is None else _as_image(reference_image)
    read = read_scene(g)
    cells = _cells(read)
    checks: list[bool] = []
    for obj in expected.objects:
        checks += [obj.position in cells] + _object_checks(cells, obj, ("shape", "colour", "size"))
    checks += [read.background == expected.background, set(cells) <= set(_cells(expected))]
    return {"attributes": float(np.mean(checks)), "exact": float(_same_scene(read, expected)),
            "pixel_deviation": float(np.abs(g - ref).mean() / 255.0)}


def attribute_accuracy(images: Any, scenes: Sequence[Scene]) -> float:
    """Mean ``scene_scores(...)["attributes"]`` of ``(N, S, S, 3)`` images against their true scenes."""
    return float(np.mean([scene_scores(im, s, im)["attributes"] for im, s in zip(images, scenes)]))


def edit_scores_batch(images: Any, records: Sequence[dict]) -> dict[str, float]:
    """Means of ``edit_scores`` over ``(N, S, S, 3)`` images and their N records, overall (``"success"``, ...) and
    per edit type (``"recolour/success"``, ..., ``"recolour/count"``); pixel_deviation means skip NaN."""
    images = np.asarray(images)
    if len(images) != len(records) or len(images) == 0:
        raise ConfigError(f"edit_scores_batch needs as many records as images (>= 1), got {len(images)} images and "
                          f"{len(records)} records")
    rows = [edit_scores(im, r) for im, r in zip(images, records)]
    kinds = [EDIT_TYPES[int(r["edit_type"])] for r in records]

    def means(sel: list[dict]) -> dict[str, float]:
        out = {k: float(np.mean([r[k] for r in sel])) for k in ("success", "preservation", "exact")}
        dev = [r["pixel_deviation"] for r in sel if not np.isnan(r["pixel_deviation"])]
        out["pixel_deviation"] = float(np.mean(dev)) if dev else float("nan")
        return out

    out = means(rows)
    for kind in EDIT_TYPES:
        sel = [r for r, k in zip(rows, kinds) if k == kind]
        if sel:
            out.update({f"{kind}/{k}": v for k, v in means(sel).items()}, **{f"{kind}/count": float(len(sel))})
    return out
