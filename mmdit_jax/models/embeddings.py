"""Embeddings of the MMDiT: patchify / unpatchify, the 2D sin-cos position table, frame offsets, timestep features.

Images are NHWC ``(B, H, W, C)``; tokens are row-major over the ``(h, w) = (H/p, W/p)`` patch grid. Clips are
``(B, T, H, W, C)``; their tokens are frame-major over ``(tau, h, w)``, ``tau = T / p_t`` temporal patches.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.models.layers import Dense

Array = jax.Array
Dtype = Any


def timestep_frequencies(dim: int = 256, max_period: float = 10000.0) -> np.ndarray:
    """``f_k = exp(e_k)``, ``e_k = fl32(fl32(-ln(max_period)) k) / (dim/2)``, ``k < dim/2``; ``(dim/2,)`` float32.

    The exponent is formed in float32 in diffusers' order (``get_timestep_embedding``); the exponential is taken in
    float64 and rounded once, so every frequency is the correctly rounded float32 of that exponent, on every backend.
    A float32 ``exp`` (XLA's, torch's) is not correctly rounded: XLA's differs from it in about one frequency in
    eight, and at ``t`` near 1000 one ulp of a frequency moves ``t f_k`` by ~1e-4 rad.
    """
    half = dim // 2
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def timestep_features(timestep: Array, dim: int = 256, max_period: float = 10000.0) -> Array:
    """Sinusoidal features ``[cos(t f_k), sin(t f_k)]`` (``timestep_frequencies``); ``(B,) -> (B, dim)``.

    Cos first (diffusers ``flip_sin_to_cos=True``, ``downscale_freq_shift=0``); computed in float32.
    """
    freqs = jnp.asarray(timestep_frequencies(dim, max_period))
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


def frame_offsets(dim: int, frames: int, start: int = 0) -> np.ndarray:
    """``(frames, dim)`` float32 rows ``e(f) - e(0)``, ``f = start .. start + frames - 1``, of the 1D sin-cos
    embedding ``e`` (the temporal factor of the factorised 3D position: ``pos(f, r, c) = pos_2d(r, c) + e(f) - e(0)``).

    Subtracting ``e(0)`` makes frame 0 exactly the image model's positions, so an image model's weights are a
    one-frame video model, and an editing model's clean reference image is simply frame 1. Any frame index has an
    embedding: clips longer than the training ones need no table extension.
    """
    table = _sincos_1d(dim, np.concatenate([np.arange(start, start + frames), [0]]))
    return (table[:-1] - table[-1:]).astype(np.float32)


def frame_offset_embedding(dim: int, index: int) -> np.ndarray:
    """``(dim,)``: ``frame_offsets`` of the single frame ``index``."""
    return frame_offsets(dim, 1, index)[0]


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


def unpatchify_clip(tokens: Array, tau: int, h: int, w: int, pt: int, p: int, channels: int) -> Array:
    """``(B, tau*h*w, pt*p*p*C)`` with per-token layout ``(t, p, q, c)`` -> ``(B, tau*pt, h*p, w*p, C)``."""
    b = tokens.shape[0]
    x = tokens.reshape(b, tau, h, w, pt, p, p, channels).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, tau * pt, h * p, w * p, channels)


def patchify_clip(x: Array, pt: int, p: int) -> Array:
    """Inverse of ``unpatchify_clip``: ``(B, T, H, W, C)`` -> ``(B, (T/pt)(H/p)(W/p), pt*p*p*C)``."""
    b, t, hh, ww, c = x.shape
    x = x.reshape(b, t // pt, pt, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, (t // pt) * (hh // p) * (ww // p), pt * p * p * c)


class MLPEmbedder(nn.Module):
    """``linear_2(silu(linear_1(u)))`` (diffusers TimestepEmbedding / PixArtAlphaTextProjection)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, u: Array) -> Array:
        dense = lambda name: Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        return dense("linear_2")(nn.silu(dense("linear_1")(u)))
