"""Instruction-based editing data on the ``shapes`` scenes: (source image, instruction, target image) triplets.

A ``Scene`` is 1..3 objects (``ShapeObject``: shape, colour, size, cell of the 3x3 grid) in distinct cells on a
named background (``BACKGROUNDS``); the (colour, shape) pairs are unique within a scene, so "the red circle" names
exactly one object. Scenes are always drawn at the crowded scale (radius = SIZE_FRACTION * S / 2 + 0.5, see
``shapes.object_radius``) so an edit of one object leaves every other pixel of the image unchanged. Objects of
neighbouring cells never share a pixel at image sizes 27, 30, 32, 33 and >= 35 (the evaluator's sizes); at other
small sizes the largest ones can touch.

An ``Edit`` is one of ``EDIT_TYPES`` applied to one object (or the background):

  recolour / reshape / resize  object ``index`` gets a new colour / shape / size (``value``, always a new one;
                               recolour and reshape keep the (colour, shape) pairs unique)
  move                         object ``index`` goes to the free cell ``value``
  remove                       object ``index`` is deleted (needs >= 2 objects)
  add                          the ``ShapeObject`` ``value`` is appended in a free cell (needs < max_objects)
  background                   the background becomes ``value``

Each type has ``len(PHRASINGS[type])`` instruction templates; the last one (``HELD_OUT``) is used only by the
held-out (test) split, so test instructions measure generalisation to new wording of known words.

A record (``edit_example``), S = image_size:
  image              (S, S, 3) uint8   the target render (the name the generic image readers use)
  source             (S, S, 3) uint8   the source render
  caption            str               the instruction (the text the editing model reads)
  source_caption     str               ``scene_caption`` of the source; target_caption: of the target
  edit_type          int64             index into EDIT_TYPES; phrasing: index into PHRASINGS[type]
  source_objects     (3, 4) int64      rows (shape, colour, size, position) ids, in scene order, -1 padded;
  target_objects     (3, 4) int64      the same for the target (= apply_edit(source, edit))
  source_background  int64             index into BACKGROUNDS; target_background likewise
  edit_index         int64             row of the edited object in source_objects (-1 for add / background)
  edit_cell          int64             position id the edit acts on: the edited object's source cell, the new
                                       object's cell for add, -1 for background
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmdit_jax.checks import ConfigError, check_choice, check_positive_int
from mmdit_jax.data.captions import COLOURS, POSITIONS, SHAPES, SIZES, ShapeObject, describe
from mmdit_jax.data.shapes import render

EDIT_TYPES = ("recolour", "reshape", "resize", "move", "remove", "add", "background")
# Dark, and named with words that are no object colour, so a caption never confuses object and background. The
# nearest object colour is >= 120 (L2, 0..255) away from every background, the nearest two backgrounds >= 50.
BACKGROUNDS = {"black": (0, 0, 0), "navy": (20, 25, 90), "maroon": (90, 20, 25), "olive": (70, 70, 20),
               "grey": (70, 70, 70)}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
MAX_OBJECTS = 3
ATTRIBUTE_WIDTH = 4   # (shape, colour, size, position) ids per object row

# {ref}: "red circle" (the edited object, by colour and shape); {new}: the new value's name; add: {z} {c} {s} {p}.
# The last template of each type is held out; it reuses words of the training templates in a new order.
PHRASINGS = {
    "recolour": ("make the {ref} {new}", "turn the {ref} {new}", "change the colour of the {ref} to {new}",
                 "paint the {ref} {new}", "change the {ref} to {new}"),
    "reshape": ("turn the {ref} into a {new}", "change the {ref} into a {new}", "make the {ref} a {new}",
                "change the shape of the {ref} to a {new}", "make the {ref} into a {new}"),
    "resize": ("make the {ref} {new}", "change the size of the {ref} to {new}", "resize the {ref} to {new}",
               "turn the {ref} {new}", "make the {ref} {new} in size"),
    "move": ("move the {ref} to the {new}", "put the {ref} in the {new}", "shift the {ref} to the {new}",
             "move the {ref} into the {new}", "shift the {ref} into the {new}"),
    "remove": ("remove the {ref}", "delete the {ref}", "take the {ref} away", "remove the {ref} from the image",
               "take away the {ref}"),
    "add": ("add a {z} {c} {s} in the {p}", "draw a {z} {c} {s} in the {p}", "put a {z} {c} {s} in the {p}",
            "add a {z} {c} {s} to the {p}", "put a {z} {c} {s} into the {p}"),
    "background": ("make the background {new}", "change the background to {new}", "turn the background {new}",
                   "paint the background {new}", "change the colour of the background to {new}"),
}
HELD_OUT = {t: len(p) - 1 for t, p in PHRASINGS.items()}


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects in distinct cells (later ones drawn on top) on the background named ``background``."""

    objects: tuple[ShapeObject, ...]
    background: str = "black"


@dataclasses.dataclass(frozen=True)
class Edit:
    """``type`` in EDIT_TYPES; ``index`` the edited object's place in ``scene.objects`` (-1 for add and
    background); ``value`` the new colour / shape / size / position / background name, the added ``ShapeObject``,
    or None for remove."""

    type: str
    index: int
    value: Any = None


def render_scene(scene: Scene, size: int = 32) -> np.ndarray:
    """``(size, size, 3)`` uint8 render of ``scene`` at the crowded scale on its background."""
    check_choice("scene.background", scene.background, BACKGROUNDS)
    return render(scene.objects, size, background=BACKGROUNDS[scene.background], crowded=True)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def scene_caption(scene: Scene) -> str:
    """e.g. "a small red circle in the top left and a large blue square in the center on a navy background"
    (no background phrase on black)."""
    text = " and ".join(describe(o, 4) for o in scene.objects)
    if scene.background != "black":
        text += f" on {_article(scene.background)} {scene.background} background"
    return text


def _free_cells(scene: Scene) -> list[str]:
    used = {o.position for o in scene.objects}
    return [p for p in POSITIONS if p not in used]


def _pairs(scene: Scene, skip: int = -1) -> set[tuple[str, str]]:
    return {(o.colour, o.shape) for i, o in enumerate(scene.objects) if i != skip}


def valid_edit_types(scene: Scene, max_objects: int = MAX_OBJECTS) -> tuple[str, ...]:
    """The edit types with at least one valid edit of ``scene`` (recolour and reshape always have one: a scene has
    at most 3 of the 8 colours and 6 shapes; move and add need a free cell, which at most 3 objects leave)."""
    n = len(scene.objects)
    return tuple(t for t in EDIT_TYPES if not (t == "remove" and n < 2) and not (t == "add" and n >= max_objects))


def sample_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> Scene:
    """1..max_objects objects with distinct cells and distinct (colour, shape) pairs, on a random background."""
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    pairs = rng.choice(len(COLOURS) * len(SHAPES), size=n, replace=False)
    objects = tuple(ShapeObject(SHAPES[p % len(SHAPES)], COLOURS[p // len(SHAPES)], SIZES[rng.integers(len(SIZES))],
                                POSITIONS[c]) for p, c in zip(pairs, cells))
    return Scene(objects, BACKGROUND_NAMES[rng.integers(len(BACKGROUND_NAMES))])


def _pick(rng: np.random.Generator, options: list) -> Any:
    return options[int(rng.integers(len(options)))]


def sample_edit(rng: np.random.Generator, scene: Scene, max_objects: int = MAX_OBJECTS) -> Edit:
    """A uniformly chosen valid edit type, object and new value (always different from the old one)."""
    kind = _pick(rng, list(valid_edit_types(scene, max_objects)))
    if kind == "background":
        return Edit(kind, -1, _pick(rng, [b for b in BACKGROUND_NAMES if b != scene.background]))
    if kind == "add":
        taken = _pairs(scene)
        pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in taken]
        colour, shape = _pick(rng, pairs)
        obj = ShapeObject(shape, colour, _pick(rng, list(SIZES)), _pick(rng, _free_cells(scene)))
        return Edit(kind, -1, obj)
    index = int(rng.integers(len(scene.objects)))
    obj, others = scene.objects[index], _pairs(scene, skip=index)
    if kind == "recolour":
        value = _pick(rng, [c for c in COLOURS if c != obj.colour and (c, obj.shape) not in others])
    elif kind == "reshape":
        value = _pick(rng, [s for s in SHAPES if s != obj.shape and (obj.colour, s) not in others])
    elif kind == "resize":
        value = _pick(rng, [z for z in SIZES if z != obj.size])
    elif kind == "move":
        value = _pick(rng, _free_cells(scene))
    else:   # remove
        value = None
    return Edit(kind, index, value)


def _check_index(scene: Scene, edit: Edit) -> int:
    if not 0 <= edit.index < len(scene.objects):
        raise ConfigError(f"edit.index={edit.index} is not an object of the scene; valid: 0..{len(scene.objects) - 1}")
    return edit.index


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """The scene after ``edit`` (objects keep their order; an added object comes last)."""
    check_choice("edit.type", edit.type, EDIT_TYPES)
    if edit.type == "background":
        check_choice("edit.value", edit.value, BACKGROUNDS)
        return Scene(scene.objects, edit.value)
    if edit.type == "add":
        return Scene(scene.objects + (edit.value,), scene.background)
    _check_index(scene, edit)
    objs = list(scene.objects)
    if edit.type == "remove":
        del objs[edit.index]
    else:
        field = {"recolour": "colour", "reshape": "shape", "resize": "size", "move": "position"}[edit.type]
        objs[edit.index] = dataclasses.replace(objs[edit.index], **{field: edit.value})
    return Scene(tuple(objs), scene.background)


def instruction(scene: Scene, edit: Edit, phrasing: int) -> str:
    """The instruction text of ``edit`` on ``scene`` with template ``PHRASINGS[edit.type][phrasing]``."""
    check_choice("edit.type", edit.type, EDIT_TYPES)
    templates = PHRASINGS[edit.type]
    if not 0 <= phrasing < len(templates):
        raise ConfigError(f"phrasing={phrasing} is not valid for {edit.type!r}; valid: 0..{len(templates) - 1}")
    if edit.type == "add":
        o = edit.value
        return templates[phrasing].format(z=o.size, c=o.colour, s=o.shape, p=o.position)
    obj = None if edit.type == "background" else scene.objects[_check_index(scene, edit)]
    ref = "" if obj is None else f"{obj.colour} {obj.shape}"
    return templates[phrasing].format(ref=ref, new=edit.value)


def object_ids(scene: Scene) -> np.ndarray:
    """``(MAX_OBJECTS, 4)`` int64 rows (shape, colour, size, position) ids in scene order, padded with -1."""
    out = np.full((MAX_OBJECTS, ATTRIBUTE_WIDTH), -1, np.int64)
    for i, o in enumerate(scene.objects):
        out[i] = (SHAPES.index(o.shape), COLOURS.index(o.colour), SIZES.index(o.size), POSITIONS.index(o.position))
    return out


def scene_from_ids(objects: np.ndarray, background: int) -> Scene:
    """Inverse of ``object_ids`` (rows with -1 are padding) and the background index."""
    rows = [r for r in np.asarray(objects).reshape(-1, ATTRIBUTE_WIDTH) if r[0] >= 0]
    return Scene(tuple(ShapeObject(SHAPES[r[0]], COLOURS[r[1]], SIZES[r[2]], POSITIONS[r[3]]) for r in rows),
                 BACKGROUND_NAMES[int(background)])


def record_scenes(record: dict) -> tuple[Scene, Edit, Scene]:
    """``(source, edit, target)`` of a record (the edit's value read from the target)."""
    source = scene_from_ids(record["source_objects"], record["source_background"])
    target = scene_from_ids(record["target_objects"], record["target_background"])
    kind, index = EDIT_TYPES[int(record["edit_type"])], int(record["edit_index"])
    if kind == "background":
        return source, Edit(kind, -1, target.background), target
    if kind == "add":
        return source, Edit(kind, -1, target.objects[-1]), target
    if kind == "remove":
        return source, Edit(kind, index, None), target
    field = {"recolour": "colour", "reshape": "shape", "resize": "size", "move": "position"}[kind]
    return source, Edit(kind, index, getattr(target.objects[index], field)), target


def _check(image_size: int, max_objects: int) -> None:
    check_positive_int("image_size", image_size)
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or not 1 <= max_objects <= MAX_OBJECTS:
        raise ConfigError(f"max_objects must be an integer in 1..{MAX_OBJECTS}, got {max_objects!r}")


def _phrasing(rng: np.random.Generator, kind: str, held_out: bool) -> int:
    train = int(rng.integers(HELD_OUT[kind]))     # drawn either way: both splits see the same scenes and edits
    return HELD_OUT[kind] if held_out else train


def edit_example(index: int, stream: int, image_size: int = 32, max_objects: int = MAX_OBJECTS,
                 held_out: bool = False) -> dict:
    """Record ``index`` of stream ``stream`` (fields in the module docstring); ``held_out`` picks the held-out
    phrasing, else one of the others."""
    _check(image_size, max_objects)
    rng = np.random.default_rng([stream, index])
    source = sample_scene(rng, max_objects)
    edit = sample_edit(rng, source, max_objects)
    phrasing = _phrasing(rng, edit.type, held_out)
    target = apply_edit(source, edit)
    cell = (-1 if edit.type == "background" else POSITIONS.index(edit.value.position) if edit.type == "add"
            else POSITIONS.index(source.objects[edit.index].position))
    return {
        "image": render_scene(target, image_size), "source": render_scene(source, image_size),
        "caption": instruction(source, edit, phrasing),
        "source_caption": scene_caption(source), "target_caption": scene_caption(target),
        "edit_type": np.int64(EDIT_TYPES.index(edit.type)), "phrasing": np.int64(phrasing),
        "source_objects": object_ids(source), "target_objects": object_ids(target),
        "source_background": np.int64(BACKGROUND_NAMES.index(source.background)),
        "target_background": np.int64(BACKGROUND_NAMES.index(target.background)),
        "edit_index": np.int64(edit.index), "edit_cell": np.int64(cell),
    }


def edit_chain(seed: int, num_turns: int, image_size: int = 32, held_out: bool = True,
               max_objects: int = MAX_OBJECTS) -> tuple[dict, list[tuple[str, Scene]]]:
    """A start scene and ``num_turns`` valid edits applied one after another (multi-turn editing).

    Returns ``({"image": (S, S, 3) uint8, "caption": str, "scene": Scene}, [(instruction_t, scene_t)])``: turn t's
    instruction is phrased against scene_{t-1} (scene_0 the start) and scene_t is the expected result. A longer
    chain of the same seed extends a shorter one.
    """
    _check(image_size, max_objects)
    check_positive_int("num_turns", num_turns)
    rng = np.random.default_rng([seed, 0x5EED, 1])    # three words: never one of edit_example's [stream, index]
    scene = sample_scene(rng, max_objects)
    start = {"image": render_scene(scene, image_size), "caption": scene_caption(scene), "scene": scene}
    turns = []
    for _ in range(num_turns):
        edit = sample_edit(rng, scene, max_objects)
        text = instruction(scene, edit, _phrasing(rng, edit.type, held_out))
        scene = apply_edit(scene, edit)
        turns.append((text, scene))
    return start, turns
