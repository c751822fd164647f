"""Widening a trained model's input projection with zero rows, so a model that reads more input channels starts as
its parent (InstructPix2Pix: "the new input channels' weights are initialised to zero").

A channel-concatenating editing model reads ``[x, image]`` where its text-to-image parent read ``x``: its input
projection (SD3's ``patch_embed`` kernel ``(p, p, C, D)``, FLUX's ``x_embedder`` kernel ``(4C, D)``) has the same
leading rows plus new ones. ``widen_inputs(parent, abstract)`` copies every parameter and pads each one whose target
shape is larger along exactly one axis with zeros after the parent's entries there; at step 0 the child's output is
then the parent's for any concatenated image.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError


def widened_axis(parent_shape: tuple[int, ...], child_shape: tuple[int, ...]) -> int | None:
    """The one axis along which ``child_shape`` is larger than ``parent_shape`` (None if the shapes are equal);
    ConfigError for any other difference."""
    if parent_shape == child_shape:
        return None
    differ = [i for i, (a, b) in enumerate(zip(parent_shape, child_shape)) if a != b]
    if len(parent_shape) != len(child_shape) or len(differ) != 1 or child_shape[differ[0]] < parent_shape[differ[0]]:
        raise ConfigError(f"a parameter of shape {parent_shape} cannot be widened to {child_shape}: only one axis may "
                          "grow")
    return differ[0]


def widen_inputs(parent: Any, abstract: Any) -> Any:
    """``parent``'s params zero-padded to the shapes of ``abstract`` (a tree of arrays or ``ShapeDtypeStruct``s with
    the same structure); the padded entries follow the parent's along the widened axis.

    ConfigError if the trees differ in structure or a parameter differs in more than one axis, or shrinks."""
    parent_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(parent)[0]}
    child_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    if parent_paths != child_paths:
        raise ConfigError(f"the parent model's parameters {sorted(parent_paths ^ child_paths)[:4]} do not match the "
                          "widened model's: only the input projection may differ")

    def widen(path: Any, p: Any, a: Any) -> Any:
        try:
            axis = widened_axis(tuple(p.shape), tuple(a.shape))
        except ConfigError as e:
            raise ConfigError(f"{jax.tree_util.keystr(path)}: {e}") from e
        if axis is None:
            return p
        pad = [(0, 0)] * p.ndim
        pad[axis] = (0, a.shape[axis] - p.shape[axis])
        return jnp.pad(jnp.asarray(p), pad)

    return jax.tree_util.tree_map_with_path(widen, parent, abstract)
