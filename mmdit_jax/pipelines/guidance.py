"""The guided net: the one place where a family's ``net(x, t)`` becomes the velocity (or score, eps, x0) a sampler
integrates, for every pipeline, task and family.

With ``c`` the conditioning bundle, ``n`` its negative (unconditional) twin, ``s`` the guidance scale:

    unguided            v = v(c)                                              (``negative is None``)
    CFG / true CFG      v = v(n) + s (v(c) - v(n))                            one batched call on ``[n; c]``
    two-scale           v = v(n, ∅) + s_I (v(n, I) - v(n, ∅)) + s (v(c, I) - v(n, I))
                        (``null_image``: the bundle with text and image both null; InstructPix2Pix-style editing)
    skip-layer guidance v <- v + w_slg (v(c) - v_skip(c))  where ``in_window`` (SD3.5's SLG; CFG only)

Guidance *embedding* (FLUX.1 dev) is not a combination of calls: it is the conditioning entry ``guidance (B,)``
the model reads, set where the bundle is built. Pooled steering (``pooled_steering`` in ``c``) is applied to both
halves of the guidance batch, so guidance compares two steered predictions. ``options`` are the family's inference
switches (``remove_pooled``, ``skip_layers``), applied to every call; the skip-layer call drops its blocks on top.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.guidance import classifier_free_guidance, two_scale_guidance
from mmdit_jax.families.base import Conditioning, Family

Array = jax.Array
Net = Callable[..., Array]


def steer_both(cond: Conditioning, negative: Conditioning) -> dict[str, Any]:
    """``negative`` carrying ``cond``'s pooled steering: the CFG batch is ``[negative; cond]``, steered alike."""
    negative = dict(negative)
    if "pooled_steering" in cond:
        negative["pooled_steering"] = cond["pooled_steering"]
    return negative


def guided_net(family: Family, variables: Mapping[str, Any], cond: Conditioning,
               negative: Conditioning | None = None, scale: float | Array = 1.0, *,
               options: Mapping[str, Any] | None = None, null_image: Conditioning | None = None,
               image_scale: float | Array = 1.0, slg_layers: tuple[int, ...] = (),
               slg_scale: float | Array = 0.0) -> Net:
    """The guided ``net(x: (B, ...), t: (B,)) -> (B, ...)`` of prepared ``variables`` (module docstring).

    With ``slg_layers`` the net is ``net(x, t, in_window)``, ``in_window`` a traced bool; ``null_image`` selects
    two-scale guidance. Scales may be traced (changing them does not recompile).
    """
    options = dict(options or {})
    if negative is None:
        return family.net(variables, cond, **options)
    negative = steer_both(cond, negative)
    model_fn = lambda v, x, t, c: family.net(v, c, **options)(x, t)  # noqa: E731
    if null_image is not None:
        guided = two_scale_guidance(model_fn, scale, image_scale)
        return lambda x, t: guided(variables, x, t, (cond, negative, steer_both(cond, null_image)))
    guided = classifier_free_guidance(model_fn, scale)
    if not slg_layers:
        return lambda x, t: guided(variables, x, t, (cond, negative))
    skip = tuple(sorted(set(options.get("skip_layers", ())) | set(slg_layers)))
    skipped = family.net(variables, cond, **{**options, "skip_layers": skip})
    both = family.net(variables, jax.tree_util.tree_map(lambda u, c: jnp.concatenate([u, c]), negative, cond),
                      **options)

    def net(x: Array, t: Array, in_window: Array) -> Array:
        v_u, v_c = jnp.split(both(jnp.concatenate([x, x]), jnp.concatenate([t, t])), 2)
        v = v_u + scale * (v_c - v_u)
        return jax.lax.cond(in_window, lambda: v + (v_c - skipped(x, t)) * slg_scale, lambda: v)

    return net
