"""Captions of the built-in ``shapes`` images: attributes -> text, from two words to long sentences.

The vocabulary is closed and small (shapes, colours, sizes, positions), so a researcher can vary one attribute
at a time and count prompt tokens exactly. Deterministic: the same attributes and template give the same text.
"""

from __future__ import annotations

import dataclasses
import itertools

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
COLOUR_RGB = {
    "red": (230, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 220, 40),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220),
}
SIZES = ("small", "medium", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    position: str


# Templates from shortest to longest; {s} shape, {c} colour, {z} size, {p} position.
TEMPLATES = (
    "{c} {s}",
    "a {c} {s}",
    "a {z} {c} {s}",
    "a {c} {s} in the {p}",
    "a {z} {c} {s} in the {p}",
    "an image of a {z} {c} {s} in the {p}",
    "a photo of a {z} {c} {s} placed in the {p} of the picture",
    "there is a {z} {c} {s} in the {p} of the image, drawn on a plain black background",
    "a simple drawing that shows one {z} {c} {s}, located in the {p} part of an otherwise empty black canvas",
)
# Templates that leave the colour, or the shape, unnamed: a scene described by its other attributes, the prompts
# whose free attribute pooled steering can set. Their indices continue TEMPLATES'; only a data set with
# ``captions="partial"`` draws them, so the default data (every caption names colour and shape) is unchanged.
PARTIAL_TEMPLATES = (
    "a {z} {s} in the {p}",
    "a {z} {c} shape in the {p}",
)
ALL_TEMPLATES = TEMPLATES + PARTIAL_TEMPLATES
# Caption sets of the ``shapes`` data: how many of ALL_TEMPLATES a record's template is drawn from.
CAPTION_SETS = {"full": len(TEMPLATES), "partial": len(ALL_TEMPLATES)}


def caption_text(record: dict) -> str:
    """A record's caption as ``str`` (TFDS text features decode to ``bytes``)."""
    cap = record["caption"]
    return cap.decode() if isinstance(cap, bytes) else str(cap)


def describe(obj: ShapeObject, template: int) -> str:
    """One object's phrase with template ``template`` (an index of ``ALL_TEMPLATES``; 0 = shortest)."""
    return ALL_TEMPLATES[template].format(s=obj.shape, c=obj.colour, z=obj.size, p=obj.position)


def caption(objects: tuple[ShapeObject, ...], template: int) -> str:
    """A caption of one or more objects, joined with 'and'."""
    return " and ".join(describe(o, template) for o in objects)


def corpus() -> list[str]:
    """Every single-object caption under every template, plus two-object captions: the tokenizer corpus."""
    objs = [ShapeObject(s, c, z, p) for s, c, z, p in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS)]
    lines = [describe(o, t) for o in objs for t in range(len(TEMPLATES))]
    pairs = zip(objs[::7], objs[3::11])
    lines += [caption(pair, t) for pair in pairs for t in (0, 2, 4)]
    return lines
