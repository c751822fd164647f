"""Embeddings of the MMDiT: patchify / unpatchify, the 2D sin-cos position table, timestep features.

Images are NHWC ``(B, H, W, C)``; tokens are row-major over the ``(h, w) = (H/p, W/p)`` patch grid.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.models.layers import Dense

Array = jax.Array
Dtype = Any


def timestep_features(timestep: Array, dim: int = 256, max_period: float = 10000.0) -> Array:
    """Sinusoidal features ``[cos(t f_k), sin(t f_k)]``, ``f_k = exp(-ln(max_period) k / (dim/2))``; ``(B,) -> (B, dim)``.

    Cos first (diffusers ``flip_sin_to_cos=True``, ``downscale_freq_shift=0``); computed in float32.
    """
    half = dim // 2
    freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = timestep.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_table(dim: int, grid_size: int, base_size: int, interpolation_scale: float = 1.0) -> np.ndarray:
    """The (M*M, dim) position table of diffusers ``get_2d_sincos_pos_embed`` (float64 maths, float32 out).

    Row-major over (row, col); the first ``dim/2`` channels encode the column, the last ``dim/2`` the row.
    """
    g = np.arange(grid_size, dtype=np.float32) / (grid_size / base_size) / interpolation_scale
    col, row = np.meshgrid(g, g, indexing="xy")  # col[i, j] = g[j], row[i, j] = g[i]
    table = np.concatenate([_sincos_1d(dim // 2, col), _sincos_1d(dim // 2, row)], axis=1)
    return table.astype(np.float32)


def crop_position_table(table: Array, h: int, w: int) -> Array:
    """Centre crop of a ``(1, M*M, D)`` table to the ``(h, w)`` grid -> ``(1, h*w, D)``."""
    m = int(round(table.shape[1] ** 0.5))
    top, left = (m - h) // 2, (m - w) // 2
    grid = table.reshape(1, m, m, table.shape[-1])
    return grid[:, top:top + h, left:left + w, :].reshape(1, h * w, table.shape[-1])


def unpatchify(tokens: Array, h: int, w: int, p: int, channels: int) -> Array:
    """``(B, h*w, p*p*C)`` with per-token layout ``(p, q, c)`` -> ``(B, h*p, w*p, C)``."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h, w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, channels)


class MLPEmbedder(nn.Module):
    """``linear_2(silu(linear_1(u)))`` (diffusers TimestepEmbedding / PixArtAlphaTextProjection)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u: Array) -> Array:
        dense = lambda name: Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        return dense("linear_2")(nn.silu(dense("linear_1")(u)))
