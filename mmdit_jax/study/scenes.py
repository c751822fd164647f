"""Scenes of the study: single objects drawn from a seeded stream, captioned by any template, edited by attribute."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mmdit_jax.data.captions import ShapeObject, describe
from mmdit_jax.data.shapes import sample_scene


def scenes(n: int, seed: int, **fixed: str) -> list[ShapeObject]:
    """``n`` single-object scenes from stream ``seed``; ``fixed`` pins attributes (e.g. ``colour="red"``)."""
    rng = np.random.default_rng(seed)
    return [dataclasses.replace(sample_scene(rng, 1)[0], **fixed) for _ in range(n)]


def prompts(objects: Sequence[ShapeObject], template: int) -> list[str]:
    return [describe(o, template) for o in objects]


def edited(objects: Sequence[ShapeObject], attribute: str, value: str) -> list[ShapeObject]:
    """The same scenes with one attribute replaced (the prompt-editing baseline of steering)."""
    return [dataclasses.replace(o, **{attribute: value}) for o in objects]
