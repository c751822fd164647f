"""Toy DreamBooth subjects: specific patterned instances of a ``shapes`` class, drawn by the ``shapes`` renderer.

A subject is a class the base model knows ("circle") with a two-colour pattern it never saw (white horizontal
stripes), so "a v circle" names one *instance* of the class "a circle". Renders vary as the data set's objects do
(position cell, size within the subject's range) plus a small RGB jitter of both colours.

Recontextualisation: ``position`` and ``size`` take any of the data set's values; ``colour`` replaces the *base*
colour only. The pattern colour is part of the subject's identity and stays fixed ("a blue v circle" is blue with
white stripes); base colours too close to the pattern colour (``MIN_CONTRAST``) would hide it and are refused.

Images: ``(n, H, W, 3)`` float32 in [0, 255] on integer levels: the ``shapes`` records' values (``astype(uint8)``
is lossless, and is what the attribute classifier, which reads floats as [-1, 1], should be given).

Prompts: ``instance_prompt(RARE_TOKEN, "circle") == "a v circle"``, ``class_prompt("circle") == "a circle"``.
``RARE_TOKEN = "v"``: the repository's CLIP BPE (built from the caption corpus, shared by the tiny and toy-CLIP
encoders) maps it to the single token ``v</w>``, which no caption ever produces, so the pretrained toy CLIP never
trained that embedding: a weak prior, DreamBooth's criterion. DreamBooth's own "sks" is three tokens here.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import numpy as np

from mmdit_jax.checks import ConfigError, check_choice, check_positive_int
from mmdit_jax.data.captions import COLOURS, COLOUR_RGB, POSITIONS, SHAPES, SIZES, ShapeObject
from mmdit_jax.data.shapes import Paint, Pattern, render

RARE_TOKEN = "v"
COLOUR_JITTER = 12.0          # max per-channel RGB offset (of 255): natural variation, far below palette gaps
# Below this L1 distance of brightness-normalised RGB (orange vs yellow: 0.41) a pattern barely shows.
MIN_CONTRAST = 0.5


@dataclasses.dataclass(frozen=True)
class Subject:
    """``pattern(y, x)`` takes offsets from the object's centre in units of its radius (y down)."""

    shape: str
    colour: str
    pattern_colour: str
    pattern: Pattern
    description: str
    sizes: tuple[str, ...] = ("medium", "large")   # its natural range; "small" is a recontextualisation


def _stripes(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.floor(np.abs(y) / 0.4 + 0.5) % 2 == 1       # two bands, 0.2..0.6 radii above and below the centre


def _checker(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (y < 0) != (x < 0)


def _dot(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (y - 0.2) ** 2 + x**2 <= 0.32**2                 # at the triangle's centroid (0.2 radii below centre)


def _bar(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.abs(x) <= 0.22


SUBJECTS: dict[str, Subject] = {
    "striped_circle": Subject("circle", "red", "white", _stripes, "red circle with two white horizontal stripes"),
    "checker_square": Subject("square", "yellow", "blue", _checker, "2x2 checker square, yellow and blue"),
    "dotted_triangle": Subject("triangle", "purple", "yellow", _dot, "purple triangle with a yellow central dot"),
    "barred_diamond": Subject("diamond", "orange", "cyan", _bar, "orange diamond with a vertical cyan bar"),
}


def subject(name: str) -> Subject:
    check_choice("subject", name, SUBJECTS)
    return SUBJECTS[name]


def subject_class(name: str) -> str:
    """The class noun of the DreamBooth prompts: the subject's shape ("circle")."""
    return subject(name).shape


def instance_prompt(token: str, class_name: str) -> str:
    return f"a {token} {class_name}"


def class_prompt(class_name: str) -> str:
    return f"a {class_name}"


def subject_prompt(token: str, class_name: str, position: str | None = None, size: str | None = None,
                   colour: str | None = None) -> str:
    """A recontextualised prompt in the captions' word order: "a small blue v circle in the top left"."""
    words = ["a", size, colour, token, class_name]
    text = " ".join(w for w in words if w)
    return f"{text} in the {position}" if position else text


def _chroma(colour: str) -> np.ndarray:
    rgb = np.asarray(COLOUR_RGB[colour], np.float64)
    return rgb / rgb.max()


def base_colours(name: str) -> list[str]:
    """The base colours subject ``name`` may take: those its pattern colour still stands out on."""
    s = subject(name)
    return [c for c in COLOURS if np.abs(_chroma(c) - _chroma(s.pattern_colour)).sum() >= MIN_CONTRAST]


def recontextualisations(name: str) -> list[tuple[str, str]]:
    """Every single-attribute context ``(attribute, value)`` that makes sense for ``name``: render it with
    ``render_subject(name, seed, n, **{attribute: value})`` and prompt ``subject_prompt(..., **{attribute: value})``."""
    return ([("position", p) for p in POSITIONS] + [("size", z) for z in SIZES]
            + [("colour", c) for c in base_colours(name)])


def _rng(key_or_seed: Any, salt: str) -> np.random.Generator:
    """A numpy generator from an int seed or a JAX key; ``salt`` keeps subjects' streams apart."""
    if isinstance(key_or_seed, (int, np.integer)):
        if key_or_seed < 0:
            raise ConfigError(f"key_or_seed must be a JAX key or an integer >= 0, got {key_or_seed}")
        entropy = [int(key_or_seed)]
    else:
        import jax

        key = key_or_seed
        if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        entropy = np.asarray(key, np.uint32).ravel().tolist()
    return np.random.default_rng([zlib.crc32(salt.encode()), *entropy])


def _choices(field: str, value: str | Sequence[str] | None, valid: Sequence[str], default: Sequence[str]) -> tuple:
    values = tuple(default) if value is None else (value,) if isinstance(value, str) else tuple(value)
    if not values:
        raise ConfigError(f"{field} must name at least one of {list(valid)}")
    for v in values:
        check_choice(field, v, valid)
    return values


def _draw(rng: np.random.Generator, shape: str, n: int, image_size: int, positions: tuple, sizes: tuple,
          colours: tuple, colour_jitter: float, subj: Subject | None) -> tuple[np.ndarray, list[dict]]:
    images, attrs = [], []
    for _ in range(n):
        obj = ShapeObject(shape, colours[rng.integers(len(colours))], sizes[rng.integers(len(sizes))],
                          positions[rng.integers(len(positions))])
        jitter = rng.uniform(-colour_jitter, colour_jitter, (2, 3))
        base = tuple(np.clip(np.asarray(COLOUR_RGB[obj.colour]) + jitter[0], 0, 255))
        if subj is None:
            paint = Paint(base)
        else:
            second = tuple(np.clip(np.asarray(COLOUR_RGB[subj.pattern_colour]) + jitter[1], 0, 255))
            paint = Paint(base, subj.pattern, second)
        images.append(render((obj,), image_size, [paint]))
        attrs.append({"shape": obj.shape, "colour": obj.colour, "size": obj.size, "position": obj.position,
                      "pattern_colour": subj.pattern_colour if subj else None})
    return np.stack(images).astype(np.float32), attrs


def render_subject(name: str, key_or_seed: Any, n: int, image_size: int = 32, *,
                   position: str | Sequence[str] | None = None, size: str | Sequence[str] | None = None,
                   colour: str | Sequence[str] | None = None,
                   colour_jitter: float = COLOUR_JITTER) -> tuple[np.ndarray, list[dict]]:
    """``(images (n, H, W, 3) float32 in [0, 255], attributes)`` of subject ``name``, deterministic in the seed.

    ``position`` / ``size`` / ``colour`` (base colour): one value, several to draw from, or None for the natural
    variation (any cell, the subject's sizes, its own colour). ``attributes[i]``: shape, colour, size, position
    (the ``shapes`` vocabulary) and pattern_colour.
    """
    s = subject(name)
    check_positive_int("n", n)
    colours = _choices("colour", colour, base_colours(name), (s.colour,))
    return _draw(_rng(key_or_seed, name), s.shape, n, image_size, _choices("position", position, POSITIONS, POSITIONS),
                 _choices("size", size, SIZES, s.sizes), colours, colour_jitter, s)


def render_plain(shape: str, key_or_seed: Any, n: int, image_size: int = 32, *,
                 position: str | Sequence[str] | None = None, size: str | Sequence[str] | None = None,
                 colour: str | Sequence[str] | None = None,
                 colour_jitter: float = 0.0) -> tuple[np.ndarray, list[dict]]:
    """The plain class: ``n`` flat ``shape`` objects, same conventions as ``render_subject`` (any colour by
    default, no jitter: the data set's own objects), for calibrating subject evaluators."""
    check_choice("shape", shape, SHAPES)
    check_positive_int("n", n)
    return _draw(_rng(key_or_seed, "plain " + shape), shape, n, image_size,
                 _choices("position", position, POSITIONS, POSITIONS), _choices("size", size, SIZES, SIZES),
                 _choices("colour", colour, COLOURS, COLOURS), colour_jitter, None)


def instance_images(name: str, n: int = 4, seed: int = 0, image_size: int = 32) -> np.ndarray:
    """DreamBooth's few instance images: ``(n, H, W, 3)`` float32 in [0, 255], natural variation."""
    return render_subject(name, seed, n, image_size)[0]


def attribute_ids(attributes: list[dict]) -> dict[str, np.ndarray]:
    """``{shape, colour, size, position: (n,) ids}`` into the ``captions`` tuples, as ``eval.attributes`` labels."""
    vocab = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}
    return {a: np.array([v.index(row[a]) for row in attributes]) for a, v in vocab.items()}
