"""Parameter layouts of the MMDiT: unrolled (``transformer_blocks_{i}``) <-> scanned (``scan_{a}_{b}/block``),
and parameter counting from abstract shapes (nothing is materialised)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


def cast_kernels(params: Any, dtype: str) -> Any:
    """The parameters the forward computes with: every ``kernel`` leaf (Dense, Conv) cast to the compute ``dtype``
    once, outside the blocks' scan; other leaves (biases, norm scales) as stored. ``dtype`` is ``model.dtype``.

    Why: the model casts each kernel where it is used, which under ``scan_blocks`` happens inside the loop: every
    iteration converts its block's float32 slice again, forward and backward. Cast first, one conversion pass
    per step remains and the loop slices bf16, which shortens the train step's elementwise work (measurements:
    experiments/benchmarks/RESULTS.md; the in-loop slice copies themselves stay).
    The forward is bit-identical (each use casts to the same dtype anyway) and the gradient reaches the float32
    parameters through the cast; a no-op in float32.
    """
    target = jnp.dtype(dtype)

    def cast(path: tuple[Any, ...], leaf: jax.Array) -> jax.Array:
        name = getattr(path[-1], "key", None)
        return leaf.astype(target) if name == "kernel" and leaf.dtype != target else leaf

    return jax.tree_util.tree_map_with_path(cast, params)


def abstract_variables(cfg: MMDiTConfig, text_tokens: int = 8) -> Any:
    """Shapes and dtypes of ``model.init`` via ``jax.eval_shape`` (no memory allocated)."""
    model = MMDiT(cfg)
    size = 4 * cfg.patch_size
    x = jax.ShapeDtypeStruct((1, size, size, cfg.in_channels), jnp.float32)
    ctx = jax.ShapeDtypeStruct((1, text_tokens, cfg.joint_attention_dim), jnp.float32)
    pooled = jax.ShapeDtypeStruct((1, cfg.pooled_projection_dim), jnp.float32) if cfg.use_pooled else None
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    return jax.eval_shape(lambda k, x, t, c, y: model.init(k, x, t, c, y), jax.random.PRNGKey(0), x, t, ctx, pooled)


def count_params(tree: Any) -> int:
    """Number of scalars in a (possibly abstract) pytree."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))
