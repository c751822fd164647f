"""Classifier-free guidance as a model wrapper, so it works with every sampler.

``out = out(uncond) + w (out(cond) - out(uncond))`` in the model's own parameterisation (the conversions are
affine in the output, so guiding scores, eps, x0 or velocities is the same thing). Both branches run as one
batched call: batch order ``[uncond; cond]``, as diffusers does.
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
