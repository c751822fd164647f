"""Parameter layouts of the MMDiT: unrolled (``transformer_blocks_{i}``) <-> scanned (``scan_{a}_{b}/block``),
and abstract shapes for counting parameters (``flops.num_parameters``) with nothing materialised."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mmdit_jax.models.mmdit import MMDiT, MMDiTConfig


def stack_blocks(variables: dict[str, Any], cfg: MMDiTConfig) -> dict[str, Any]:
    """Unrolled -> scanned layout: each run of identical blocks becomes one stacked subtree."""
    params = dict(variables["params"])
    for start, stop, _ in cfg.block_groups():
        blocks = [params.pop(f"transformer_blocks_{i}") for i in range(start, stop)]
        params[f"scan_{start}_{stop}"] = {"block": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)}
    return {**variables, "params": params}


def unstack_blocks(variables: dict[str, Any], cfg: MMDiTConfig) -> dict[str, Any]:
    """Scanned -> unrolled layout (the inverse of ``stack_blocks``)."""
    params = dict(variables["params"])
    for start, stop, _ in cfg.block_groups():
        stacked = params.pop(f"scan_{start}_{stop}")["block"]
        for j, i in enumerate(range(start, stop)):
            params[f"transformer_blocks_{i}"] = jax.tree_util.tree_map(lambda x: x[j], stacked)
    return {**variables, "params": params}


def abstract_variables(cfg: MMDiTConfig, text_tokens: int = 8) -> Any:
    """Shapes and dtypes of ``model.init`` via ``jax.eval_shape`` (no memory allocated)."""
    model = MMDiT(cfg)
    size = 4 * cfg.patch_size
    x = jax.ShapeDtypeStruct((1, size, size, cfg.in_channels), jnp.float32)
    ctx = jax.ShapeDtypeStruct((1, text_tokens, cfg.joint_attention_dim), jnp.float32)
    pooled = jax.ShapeDtypeStruct((1, cfg.pooled_projection_dim), jnp.float32) if cfg.use_pooled else None
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    return jax.eval_shape(lambda k, x, t, c, y: model.init(k, x, t, c, y), jax.random.PRNGKey(0), x, t, ctx, pooled)
