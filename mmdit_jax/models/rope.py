"""Multi-axis rotary position embedding (RoPE) of FLUX.1 (maths: docs/flux.md §3).

A token with position ids ``p = (p_0, .., p_{A-1})`` (FLUX: A = 3, ``(index, row, col)``) rotates each adjacent
pair ``(u_{2j}, u_{2j+1})`` of a query / key head vector by the angle ``p_a w_k``, where pair ``j`` belongs to
axis ``a`` (axes take ``d_a / 2`` consecutive pairs, ``sum_a d_a = head_dim``) and ``w_k = theta^(-2k / d_a)``,
``k < d_a / 2``, counts within the axis:

    out_{2j}   = cos(p_a w_k) u_{2j} - sin(p_a w_k) u_{2j+1}
    out_{2j+1} = sin(p_a w_k) u_{2j} + cos(p_a w_k) u_{2j+1}

The tables hold ``cos`` and ``sin`` per dimension (each pair's value repeated twice, diffusers'
``repeat_interleave_real``): ``(L, head_dim)`` for ``L`` tokens.

Video uses the same three axes as ``(t, row, col)``: ``grid_ids`` builds the ids of a ``(t, row, col)`` token grid,
time outermost (HunyuanVideo's and Wan's token order, whose rotary tables these equal, docs/flux.md "Video").
RoPE rotates by ``p_a w_k`` for any position, so a table extends to clips longer than any seen in training.

Precision: diffusers (``FluxPosEmbed``) forms ``w_k`` and the angles in float64 and rounds cos / sin to float32.
``rope_tables`` does the same on the host when the ids are concrete (numpy): bit-for-bit the same tables up to
float64 cos / sin ulps, which float32 rounding removes. Ids that are traced values (``jax.Array`` under ``jit``)
are computed in float32 in the graph: ``w_k`` is still rounded once from float64, but the angle ``p w_k`` and
its cos / sin are float32, an error of ~``|p w_k| 2^-24`` rad (under 1e-5 for positions below ~150).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def rope_frequencies(axes_dims: Sequence[int], theta: float = 10000.0) -> list[np.ndarray]:
    """Per axis ``a``: ``w_k = 1 / theta^(2k / d_a)``, ``k < d_a / 2``, in float64 (diffusers'
    ``get_1d_rotary_pos_embed`` with ``freqs_dtype=float64``)."""
    return [1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d)) for d in axes_dims]


def grid_ids(sizes: Sequence[int], offsets: Sequence[int] | None = None) -> np.ndarray:
    """``(prod(sizes), len(sizes))`` float32 ids of a token grid, row-major (the last axis fastest): token
    ``(i_0, .., i_{A-1})`` has ids ``(offsets_0 + i_0, .., offsets_{A-1} + i_{A-1})``.

    ``grid_ids((F, h, w))`` are the ``(t, row, col)`` ids of ``F`` frames of ``h x w`` tokens, time outermost;
    ``offsets=(t0, 0, 0)`` starts the time axis at ``t0`` (a clip after ``t0`` temporal patches of context).
    """
    offsets = (0,) * len(sizes) if offsets is None else tuple(offsets)
    if len(offsets) != len(sizes):
        raise ValueError(f"offsets {offsets} and sizes {tuple(sizes)} must have one entry per axis")
    axes = np.meshgrid(*(o + np.arange(n, dtype=np.float32) for n, o in zip(sizes, offsets)), indexing="ij")
    return np.stack([a.reshape(-1) for a in axes], axis=-1).astype(np.float32)


def rope_tables(ids: np.ndarray | Array, axes_dims: Sequence[int], theta: float = 10000.0) -> tuple[Array, Array]:
    """``(cos, sin)``, each ``(L, sum(axes_dims))`` float32, for position ids ``(L, A)``.

    numpy ids: float64 maths on the host (diffusers' tables, embedded as constants); jax ids: float32 in the graph.
    """
    if len(axes_dims) != ids.shape[-1]:
        raise ValueError(f"ids have {ids.shape[-1]} axes but axes_dims_rope has {len(axes_dims)}: {tuple(axes_dims)}")
    freqs = rope_frequencies(axes_dims, theta)
    if isinstance(ids, np.ndarray):
        # positions as float32 first (diffusers: ids.float()), then promoted to float64 with the frequencies
        pos = ids.astype(np.float32).astype(np.float64)
        angles = np.concatenate([np.outer(pos[:, a], f) for a, f in enumerate(freqs)], axis=-1)
        cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        return jnp.asarray(np.repeat(cos, 2, axis=-1)), jnp.asarray(np.repeat(sin, 2, axis=-1))
    pos = jnp.asarray(ids).astype(jnp.float32)
    angles = jnp.concatenate([pos[:, a:a + 1] * jnp.asarray(f.astype(np.float32))[None] for a, f in enumerate(freqs)],
                             axis=-1)
    return jnp.repeat(jnp.cos(angles), 2, axis=-1), jnp.repeat(jnp.sin(angles), 2, axis=-1)


def apply_rope(u: Array, cos: Array, sin: Array) -> Array:
    """Rotate adjacent pairs of ``u: (B, L, H, d)`` by the tables ``cos, sin: (L, d)``; float32 maths, cast back
    (diffusers' ``apply_rotary_emb`` with ``use_real_unbind_dim=-1``):

        out = u cos + rot(u) sin,   rot(u)_{2j} = -u_{2j+1},  rot(u)_{2j+1} = u_{2j}
    """
    uf = u.astype(jnp.float32)
    pairs = uf.reshape(u.shape[:-1] + (-1, 2))
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(u.shape)
    return (uf * cos[None, :, None, :] + rotated * sin[None, :, None, :]).astype(u.dtype)
