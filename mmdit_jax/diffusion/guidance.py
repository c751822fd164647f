"""Classifier-free guidance as a model wrapper, so it works with every sampler.

``out = out(uncond) + w (out(cond) - out(uncond))`` in the model's own parameterisation (the conversions are
affine in the output, so guiding scores, eps, x0 or velocities is the same thing). Both branches run as one
batched call: batch order ``[uncond; cond]``, as diffusers does.

Two-scale guidance (InstructPix2Pix, Brooks et al. 2023) conditions on an image ``c_I`` and a text ``c_T`` and
guides each with its own scale::

    out = out(0_I, 0_T) + s_I (out(c_I, 0_T) - out(0_I, 0_T)) + s_T (out(c_I, c_T) - out(c_I, 0_T))

with ``0_I`` / ``0_T`` the null image / text (the caller's choice; InstructPix2Pix uses zero image latents). The
three branches run as one call on ``3B`` rows in diffusers' order ``[full; image_only; neither]``. ``s_I = s_T = 1``
is the fully conditional model; ``s_I = 1`` is ordinary guidance of ``full`` against ``image_only``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
# model_fn(params, x: (B, ...), t: (B,), cond: pytree with leading axis B) -> (B, ...)
ModelFn = Callable[[Any, Array, Array, Any], Array]


def classifier_free_guidance(model_fn: ModelFn, guidance_scale: float | Array) -> ModelFn:
    """Return ``guided(params, x, t, (cond, uncond))``; ``guidance_scale = 1`` is the conditional model."""

    def guided(params: Any, x: Array, t: Array, conds: tuple[Any, Any]) -> Array:
        cond, uncond = conds
        both = jax.tree_util.tree_map(lambda u, c: jnp.concatenate([u, c], axis=0), uncond, cond)
        out = model_fn(params, jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both)
        out_uncond, out_cond = jnp.split(out, 2, axis=0)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return guided


def two_scale_guidance(model_fn: ModelFn, text_scale: float | Array, image_scale: float | Array) -> ModelFn:
    """Return ``guided(params, x, t, (full, image_only, neither))`` for InstructPix2Pix-style guidance.

    ``full`` carries (c_I, c_T), ``image_only`` (c_I, 0_T) and ``neither`` (0_I, 0_T): conditioning pytrees of
    the same structure, each leaf with leading axis B. ``x``: (B, ...), ``t``: (B,); ``model_fn`` is called once
    on ``3B`` rows ordered ``[full; image_only; neither]`` and ``guided`` returns (B, ...).
    """

    def guided(params: Any, x: Array, t: Array, conds: tuple[Any, Any, Any]) -> Array:
        full, image_only, neither = conds
        batched = jax.tree_util.tree_map(
            lambda f, i, n: jnp.concatenate([f, i, n], axis=0), full, image_only, neither)
        out = model_fn(params, jnp.concatenate([x, x, x], axis=0), jnp.concatenate([t, t, t], axis=0), batched)
        out_full, out_image, out_neither = jnp.split(out, 3, axis=0)
        return (out_neither + image_scale * (out_image - out_neither)
                + text_scale * (out_full - out_image))

    return guided
