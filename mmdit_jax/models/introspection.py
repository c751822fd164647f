"""Look inside an MMDiT: the shape of every intermediate, and the joint-attention maps of each block.

    attention_maps(...)[i]: (B, H, N + T, N + T)  softmax over keys, image tokens first (joint attention order)
    text_to_image(w, n, (h, w)): (B, T, h, w)      how much image patch queries attend to each text token

Attention weights are recorded (``sow`` into the ``attention`` collection) only when that collection is
mutable, so ordinary calls pay nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from mmdit_jax.models.mmdit import MMDiT

Array = jax.Array


def intermediate_shapes(model: MMDiT, variables: Any, *args, **kwargs) -> list[tuple[str, tuple[int, ...]]]:
    """``[(module path, output shape)]`` of every submodule call, sorted by path (abstract evaluation: no FLOPs)."""
    def run(v):
        return model.apply(v, *args, capture_intermediates=True, mutable=["intermediates"], **kwargs)[1]

    inter = jax.eval_shape(run, variables)["intermediates"]
    rows = []
    for path, leaf in flatten_dict(inter).items():
        name = "/".join(p for p in path if p != "__call__") or "MMDiT"
        for i, out in enumerate(jax.tree_util.tree_leaves(leaf)):
            rows.append((name + (f"[{i}]" if i else ""), tuple(out.shape)))
    return rows


def attention_maps(model: MMDiT, variables: Any, *args, **kwargs) -> dict[str, np.ndarray]:
    """``{block name: (B, H, N + T, N + T)}`` joint-attention weights of one forward pass."""
    _, state = model.apply(variables, *args, mutable=["attention"], **kwargs)
    maps = {}
    for path, value in flatten_dict(state["attention"]).items():
        block = next(p for p in path if p.startswith(("transformer_blocks", "scan")))
        maps[block + ("/attn2" if "attn2" in path else "")] = np.asarray(value[0])
    return dict(sorted(maps.items(), key=lambda kv: int(kv[0].split("_")[-1].split("/")[0])))


def text_to_image(weights: np.ndarray, num_image_tokens: int, grid: tuple[int, int]) -> np.ndarray:
    """``(B, H, N + T, N + T) -> (B, T, h, w)``: image-query attention on each text key, averaged over heads."""
    n = num_image_tokens
    w = jnp.asarray(weights)[:, :, :n, n:].mean(axis=1)        # (B, N, T)
    return np.asarray(jnp.moveaxis(w, -1, 1).reshape(w.shape[0], w.shape[-1], *grid))
