"""Parameter layouts of FLUX.1: unrolled (``transformer_blocks_{i}``, ``single_transformer_blocks_{j}``) <->
scanned (``transformer_blocks/block``, ``single_transformer_blocks/block``, leading axis = block index), and
abstract shapes for counting parameters without allocating them (``flops.num_parameters``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mmdit_jax.models.flux import FluxConfig, FluxTransformer, latent_image_ids, text_ids

_GROUPS = (("transformer_blocks", "num_layers"), ("single_transformer_blocks", "num_single_layers"))


def is_scanned(variables: dict[str, Any]) -> bool:
    return "transformer_blocks" in variables["params"] or "single_transformer_blocks" in variables["params"]


def stack_blocks(variables: dict[str, Any], cfg: FluxConfig) -> dict[str, Any]:
    """Unrolled -> scanned layout: each kind of block becomes one stacked subtree."""
    params = dict(variables["params"])
    for group, count in _GROUPS:
        blocks = [params.pop(f"{group}_{i}") for i in range(getattr(cfg, count))]
        if blocks:
            params[group] = {"block": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)}
    return {**variables, "params": params}


def unstack_blocks(variables: dict[str, Any], cfg: FluxConfig) -> dict[str, Any]:
    """Scanned -> unrolled layout (the inverse of ``stack_blocks``)."""
    params = dict(variables["params"])
    for group, count in _GROUPS:
        if group not in params:
            continue
        stacked = params.pop(group)["block"]
        for i in range(getattr(cfg, count)):
            params[f"{group}_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    return {**variables, "params": params}


def abstract_variables(cfg: FluxConfig, height: int = 4, width: int = 4, text_tokens: int = 8) -> Any:
    """Shapes and dtypes of ``FluxTransformer(cfg).init`` via ``jax.eval_shape`` (no memory allocated);
    ``height, width``: the (even) latent size of the example input."""
    model = FluxTransformer(cfg)
    n = (height // 2) * (width // 2)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    guidance = f32(1) if cfg.guidance_embeds else None

    def init(key, tokens, t, context, pooled, g):
        return model.init(key, tokens, t, context, pooled, latent_image_ids(height, width), text_ids(text_tokens), g)

    return jax.eval_shape(init, jax.random.PRNGKey(0), f32(1, n, cfg.in_channels), f32(1),
                          f32(1, text_tokens, cfg.joint_attention_dim), f32(1, cfg.pooled_projection_dim), guidance)
