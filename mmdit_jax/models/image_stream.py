"""The image stream of both transformer families: the noisy target's tokens first, then clean token groups, each
at its own place on one ``(frame, row, col)`` grid; the output is read from the target's tokens.

    stream = [ tokens(x) ; tokens(reference) ]          image x at frame 0, the reference at frame 1
    stream = [ tokens(x) ; tokens(context_frames) ]     context frames at 0 .. F_c - 1, the clip x from frame F_c
    output = model(stream)[:, :N_x]

Frames are counted in temporal patches (``F_c = T_c / p_t``). A clean group is never noised and shares the target's
``t`` and ``y``. In-context editing (SD3 in-context, FLUX.1 Kontext) places a reference image as frame 1; video
next-chunk generation places the previous frames before the clip in time. A clip's frame axis is time, so a clip
takes no reference (its frame 1 is a time) and an image takes no context frames.

``image_stream`` decides which groups there are, where each sits and what must agree between them (shared).
How a family turns a group into tokens at its frame differs in the maths of positions (family):

* SD3 (``models/mmdit.py``), additive sin-cos positions inside the model:
  ``tokens = PatchEmbed(g) + pos_2d(r, c) + e(f) - e(0)`` (``embeddings.frame_offsets``; frame 0 adds nothing).
* FLUX (``families/flux.py``), rotary positions: ``tokens = pack(g)`` with ids ``(f, r, c)``
  (``models/flux.py`` ``group_ids``); nothing is added to the tokens, the ids rotate queries and keys in attention.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from mmdit_jax.checks import ConfigError

Array = jax.Array


class TokenGroup(NamedTuple):
    """``latents``: an image ``(B, H, W, C)`` or a clip ``(B, T, H, W, C)``; ``frame``: the frame index (in
    temporal patches) of its first frame."""

    latents: Array
    frame: int


def check_clean_groups(reference: Array | None, context_frames: Array | None) -> None:
    """The checks that need no target: a reference (editing) and context frames (video) exclude each other."""
    if reference is not None and context_frames is not None:
        raise ConfigError("context_frames (frame-by-frame video) and reference (in-context editing) cannot be "
                          "combined: the reference's frame 1 is a time on the clip's frame axis")


def image_stream(x: Array, reference: Array | None = None, context_frames: Array | None = None,
                 temporal_patch_size: int = 1) -> tuple[TokenGroup, ...]:
    """The groups of the stream, target first (module docstring). ``x: (B, H, W, C)`` or ``(B, T, H, W, C)``;
    ``reference: (B, h, w, C)`` (any size: its own grid from 0); ``context_frames: (B, T_c, H, W, C)``."""
    check_clean_groups(reference, context_frames)
    pt = temporal_patch_size
    if x.ndim == 5 and x.shape[1] % pt:
        raise ConfigError(f"a clip of {x.shape[1]} frames is not divisible by model.temporal_patch_size={pt}")
    if context_frames is not None:
        if x.ndim != 5 or context_frames.ndim != 5 or context_frames.shape[0] != x.shape[0] or \
                context_frames.shape[2:] != x.shape[2:]:
            raise ConfigError(f"context_frames must be clean frames of a clip (B, T_c, H, W, C) like x (B, T, H, W, "
                              f"C), got context_frames {tuple(context_frames.shape)} for x {tuple(x.shape)}")
        if context_frames.shape[1] % pt:
            raise ConfigError(f"context_frames has {context_frames.shape[1]} frames, not divisible by "
                              f"model.temporal_patch_size={pt}")
        first = context_frames.shape[1] // pt
        return TokenGroup(x, first), TokenGroup(context_frames, 0)
    if reference is not None:
        if x.ndim == 5:
            raise ConfigError("reference (in-context editing, frame 1) cannot go with a clip, whose frame axis is "
                              "time: condition on earlier frames with context_frames")
        if reference.ndim != 4 or reference.shape[0] != x.shape[0] or reference.shape[-1] != x.shape[-1]:
            raise ConfigError(f"reference must be a clean image (B, h, w, C) with x's batch and channels "
                              f"{tuple(x.shape)}, got {tuple(reference.shape)}")
        return TokenGroup(x, 0), TokenGroup(reference, 1)
    return (TokenGroup(x, 0),)
