"""Moving ``shapes``: clips of one object gliding over a black background, captioned with its motion.

A clip is one object (shape, colour, size of the ``shapes`` vocabulary) moving in a straight line in one of
``DIRECTIONS`` at one of ``SPEEDS`` (with ``bounce``, reflected off the walls), drawn anti-aliased at its
continuous centre in every frame. Deterministic by ``(index, stream)`` like ``edits.edit_example``.

Scale. Objects have the single-object radius of ``shapes.object_radius(size, S, crowded=False)``, the scale of
the still ``shapes`` images, so the sizes mean what they mean there (the still-image attribute classifier still
needs retraining on clip frames: it has only seen objects at the 9 cell centres, see ``eval/motion.py``). Objects
are not shrunk; the speeds are chosen so that this scale leaves room to move: at 32 px "slowly" is 1 px / frame and
"quickly" 2 px / frame (scaled by S / 32), and a large object (radius 0.22 S + 0.5) has S - 2 radius = 0.56 S - 1
pixels of travel, of which a quick clip uses ``(num_frames - 1) * 2 S / 32``: 8 frames fit from 9 px up, 9
frames at 32 px, 10 at no size (``check_fits``); longer clips bounce off the walls (rollouts, and the data with
``bounce``).

Walls. ``track`` reflects the centre off the walls ``[r, S - r]`` (r the object's radius), so the object never
leaves the image however long a clip is asked for (autoregressive rollouts). By default the data set's clips never
bounce: ``motion_example`` draws the start so the whole clip stays inside the walls and the caption's direction
holds in every frame.

Bounce (``bounce=True``). Clips of any length: the start is drawn inside the walls and the clip follows ``track``,
reflecting off them; the caption says the object is bouncing (``BOUNCE_TEMPLATES``, e.g. "a red circle bouncing
quickly to the right") and names its *initial* direction. That is the direction ``eval/motion.motion_of_track``
reads, from the median step over the first half of the clip (its first ``ceil((T - 1) / 2)`` steps), only if
the object has not bounced by then: with starts drawn anywhere, a bounce early in the first half flips the read
(16-frame clips: a third of the directions misread). So along the motion the start leaves room for the first
half's travel, and the first bounce comes after the first half: every size and speed allows that for clips of up
to 17 frames at 32 px and up (15 at 16 px). Where the walls leave less room than the first half's travel (longer
clips), the start is the wall behind the object (the first bounce as late as it can be) and ``motion_of_track``
may misread the clip. Across the motion the start is any centre inside the walls.

A record (``motion_example``), T = num_frames, S = image_size:
  video      (T, S, S, 3) uint8   the frames
  caption    str                  names colour, shape, direction and speed (size in most templates); with
                                  bounce, "bouncing" and the initial direction
  centres    (T, 2) float32       the object's (y, x) centre per frame, pixels, y down (pixel i covers [i, i+1))
  shape, colour, size             int64 ids into captions.SHAPES / COLOURS / SIZES
  direction, speed                int64 ids into DIRECTIONS / SPEEDS
  template   int64                index into MOTION_TEMPLATES (BOUNCE_TEMPLATES with bounce)
  radius     float32              the object's radius in pixels
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from mmdit_jax.checks import ConfigError, check_choice, check_positive_int
from mmdit_jax.data.captions import COLOURS, COLOUR_RGB, SHAPES, SIZES
from mmdit_jax.data.render import to_grid
from mmdit_jax.data.shapes import object_radius, shape_mask

DIRECTIONS = ("right", "left", "up", "down")
DIRECTION_VECTORS = {"right": (0.0, 1.0), "left": (0.0, -1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}   # (dy, dx)
DIRECTION_PHRASES = {"right": "to the right", "left": "to the left", "up": "up", "down": "down"}
SPEEDS = ("slowly", "quickly")
SPEED_PIXELS = {"slowly": 1.0, "quickly": 2.0}   # pixels per frame at 32 x 32; scaled by image_size / 32
REFERENCE_SIZE = 32
# 8x8 subpixel samples per pixel (the still images use 4x4): edges land on a 1/8-pixel grid, so a frame's intensity
# centroid is the object's centroid to ~0.06 px at any continuous position (4x4 is off by up to 0.12 px).
SUPERSAMPLE = 8

# {c} colour, {s} shape, {z} size, {v} speed word, {d} direction phrase; shortest first. Every template names
# colour, shape, direction and speed (the motion metrics score both); the short ones leave out the size.
MOTION_TEMPLATES = (
    "{c} {s} moving {v} {d}",
    "a {c} {s} moving {v} {d}",
    "a {c} {s} drifting {v} {d}",
    "a {z} {c} {s} moving {d} {v}",
    "a {z} {c} {s} sliding {v} {d} across a black background",
    "a video of a {z} {c} {s} that moves {v} {d}",
    "a short clip in which a {z} {c} {s} travels {v} {d} over a plain black canvas",
)
# The same slots for clips that bounce off the walls ({d}: the initial direction); every one says "bouncing".
# The longest is 43 toy-CLIP tokens (45 with the start and end tokens), within configs/video.py's 48.
BOUNCE_TEMPLATES = (
    "{c} {s} bouncing {v} {d}",
    "a {c} {s} bouncing {v} {d}",
    "a {c} {s} bouncing {v} {d} off the walls",
    "a {z} {c} {s} bouncing {d} {v}",
    "a {z} {c} {s} bouncing {v} {d} across a black background",
    "a video of a {z} {c} {s} bouncing {v} {d}",
    "a short clip in which a {z} {c} {s} is bouncing {v} {d} over a plain black canvas",
)


@dataclasses.dataclass(frozen=True)
class Motion:
    """One moving object: vocabulary names, and its centre ``start = (y, x)`` in pixels at frame 0."""

    shape: str
    colour: str
    size: str
    direction: str
    speed: str
    start: tuple[float, float]


def speed_pixels(speed: str, image_size: int) -> float:
    """Pixels per frame of the speed named ``speed`` in a ``image_size x image_size`` clip."""
    check_choice("speed", speed, SPEEDS)
    return SPEED_PIXELS[speed] * image_size / REFERENCE_SIZE


def motion_radius(size: str, image_size: int) -> float:
    """The object's radius in pixels: the single-object scale of ``shapes.object_radius``."""
    return object_radius(size, image_size, crowded=False)


def check_fits(image_size: int, num_frames: int, prefix: str = "") -> None:
    """Raise ConfigError unless a large object moving quickly fits ``num_frames`` frames without a bounce
    (``(num_frames - 1) * quick speed <= image_size - 2 * large radius``); ``prefix`` goes before the field
    names (``"data."`` for a config section). Clips with ``bounce`` fit at any length and skip this check."""
    check_positive_int(f"{prefix}image_size", image_size)
    check_positive_int(f"{prefix}num_frames", num_frames)
    room = image_size - 2 * motion_radius("large", image_size)
    travel = (num_frames - 1) * speed_pixels("quickly", image_size)
    if travel > room:
        longest = int(np.floor(room / speed_pixels("quickly", image_size))) + 1 if room >= 0 else 0
        raise ConfigError(
            f"{prefix}num_frames={num_frames} does not fit {prefix}image_size={image_size}: a large object moving "
            f"quickly travels {travel:.2f} px but has {room:.2f} px between the walls; use "
            f"{prefix}num_frames <= {longest} at this size (no size fits more than 9 frames), or "
            f"{prefix}bounce=True")


def _fold(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions ``p`` reflected into ``[lo, hi]`` (a billiard path: period ``2 (hi - lo)``)."""
    span = hi - lo
    if span <= 0:    # no room to move: the object stays centred
        return np.full_like(p, (lo + hi) / 2)
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q > span, 2 * span - q, q)


def track(motion: Motion, num_frames: int, image_size: int) -> np.ndarray:
    """``(num_frames, 2)`` float64 ``(y, x)`` centres: a straight line at the motion's speed, reflected off the
    walls ``[r, S - r]`` (r the object's radius), so the object stays inside the image in every frame."""
    check_positive_int("num_frames", num_frames)
    check_choice("direction", motion.direction, DIRECTIONS)
    r = motion_radius(motion.size, image_size)
    step = np.asarray(DIRECTION_VECTORS[motion.direction]) * speed_pixels(motion.speed, image_size)
    free = np.asarray(motion.start, np.float64) + np.arange(num_frames)[:, None] * step
    return _fold(free, r, image_size - r)


def _coverage(shape: str, image_size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """``shapes.shape_mask`` of the whole image, computed on a window around the object only (the object lies
    within ``radius`` of its centre; the window's integer offset keeps the same subpixel samples)."""
    w = int(np.ceil(2 * radius)) + 2
    oy, ox = (int(np.floor(c - radius)) for c in centre)
    window = shape_mask(shape, w, (centre[0] - oy, centre[1] - ox), radius, SUPERSAMPLE)
    canvas = np.zeros((image_size + 2 * w, image_size + 2 * w), np.float64)
    canvas[w + oy:2 * w + oy, w + ox:2 * w + ox] = window
    return canvas[w:w + image_size, w:w + image_size]


def render_clip(motion: Motion, num_frames: int, image_size: int) -> np.ndarray:
    """``(T, S, S, 3)`` uint8 frames of the object at ``track``'s centres on black, anti-aliased
    (``shapes.shape_mask`` with ``SUPERSAMPLE`` x ``SUPERSAMPLE`` samples per pixel)."""
    check_choice("shape", motion.shape, SHAPES)
    check_choice("colour", motion.colour, COLOURS)
    radius = motion_radius(motion.size, image_size)
    rgb = np.asarray(COLOUR_RGB[motion.colour], np.float32)
    frames = [_coverage(motion.shape, image_size, c, radius)[..., None] * rgb
              for c in track(motion, num_frames, image_size)]
    return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


def motion_caption(motion: Motion, template: int, bounce: bool = False) -> str:
    """The caption of ``motion`` with ``MOTION_TEMPLATES[template]`` (``BOUNCE_TEMPLATES[template]`` if
    ``bounce``: the direction named is the initial one)."""
    templates = BOUNCE_TEMPLATES if bounce else MOTION_TEMPLATES
    if not 0 <= template < len(templates):
        raise ConfigError(f"template={template} is not valid; valid: 0..{len(templates) - 1}")
    return templates[template].format(c=motion.colour, s=motion.shape, z=motion.size, v=motion.speed,
                                      d=DIRECTION_PHRASES[motion.direction])


def parse_motion(text: str) -> dict[str, int]:
    """The ``direction`` and ``speed`` ids a caption mentions (``eval/attributes.parse_caption`` reads shape,
    colour and size; it would read "to the right" as a position, so motion captions need this one too)."""
    found: dict[str, int] = {}
    lowered = text.lower()
    for name, values in (("direction", DIRECTIONS), ("speed", SPEEDS)):
        for i, v in enumerate(values):
            if re.search(rf"\b{v}\b", lowered):
                found[name] = i
                break
    return found


def first_half_steps(num_frames: int) -> int:
    """``ceil((num_frames - 1) / 2)`` (at least 1): the steps ``eval/motion.motion_of_track`` reads a clip's
    direction and speed from, and that a bouncing clip makes before its first bounce."""
    return max(1, -(-(num_frames - 1) // 2))


def sample_motion(rng: np.random.Generator, image_size: int, num_frames: int, bounce: bool = False) -> Motion:
    """A random object and motion. Without ``bounce`` its ``num_frames`` frames stay inside the walls without a
    bounce: along the motion the start leaves room for the whole travel. With ``bounce`` it leaves room for the
    first half's travel only (``first_half_steps``; the wall behind the object when even that does not fit), so
    the first bounce comes after the first half (module docstring). Across the motion: any centre inside the
    walls. The same random draws either way."""
    if not bounce:
        check_fits(image_size, num_frames)
    shape, colour = SHAPES[rng.integers(len(SHAPES))], COLOURS[rng.integers(len(COLOURS))]
    size, direction = SIZES[rng.integers(len(SIZES))], DIRECTIONS[rng.integers(len(DIRECTIONS))]
    speed = SPEEDS[rng.integers(len(SPEEDS))]
    r = motion_radius(size, image_size)
    lo, hi = r, image_size - r
    if bounce:
        # never more than the room between the walls: then the start range is the wall behind the object
        travel = min(first_half_steps(num_frames) * speed_pixels(speed, image_size), max(hi - lo, 0.0))
    else:
        travel = (num_frames - 1) * speed_pixels(speed, image_size)
    dy, dx = DIRECTION_VECTORS[direction]
    start = []
    for d in (dy, dx):
        a, b = (lo, hi - travel) if d > 0 else (lo + travel, hi) if d < 0 else (lo, hi)
        start.append(float(a + (b - a) * rng.random()))
    return Motion(shape, colour, size, direction, speed, (start[0], start[1]))


def motion_example(index: int, stream: int, image_size: int = 32, num_frames: int = 8,
                   bounce: bool = False) -> dict:
    """Record ``index`` of stream ``stream`` (fields in the module docstring); ``bounce``: a clip that may
    bounce off the walls after its first half, captioned as bouncing."""
    rng = np.random.default_rng([stream, index])
    motion = sample_motion(rng, image_size, num_frames, bounce)
    template = int(rng.integers(len(BOUNCE_TEMPLATES if bounce else MOTION_TEMPLATES)))
    return {
        "video": render_clip(motion, num_frames, image_size),
        "caption": motion_caption(motion, template, bounce),
        "centres": track(motion, num_frames, image_size).astype(np.float32),
        "shape": np.int64(SHAPES.index(motion.shape)), "colour": np.int64(COLOURS.index(motion.colour)),
        "size": np.int64(SIZES.index(motion.size)), "direction": np.int64(DIRECTIONS.index(motion.direction)),
        "speed": np.int64(SPEEDS.index(motion.speed)), "template": np.int64(template),
        "radius": np.float32(motion_radius(motion.size, image_size)),
    }


def clip_strip(samples: np.ndarray, rows: int = 1) -> np.ndarray:
    """``(N, T, S, S, 3)`` clips in [-1, 1] -> one uint8 picture, one clip per row, frames left to right, with
    ``render.to_grid``'s 1-pixel grey border (``rows`` is unused: there are always N rows)."""
    del rows
    x = np.asarray(samples)
    if x.ndim != 5:
        raise ConfigError(f"clip_strip needs (N, T, S, S, 3) clips, got shape {x.shape}")
    return to_grid(x.reshape(-1, *x.shape[2:]), len(x))
