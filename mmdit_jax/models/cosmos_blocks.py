"""The pieces of Cosmos-Predict2 (diffusers' ``CosmosTransformer3DModel``; maths: docs/cosmos.md): the 3D rotary
tables, the learnable extra position embedding, the time embedding, AdaLN-LoRA and the transformer block.

Conditioning is on the time only. With ``phi = timestep_features(t)`` (width D, cos first):

    temb = W_2 silu(W_1 phi)                  (B, F, 3D)   shared by every adaLN of the network
    e    = RMSNorm(phi)                       (B, F, D)    the "embedded timestep"
    (shift, scale, gate) = U_k (V_k silu(e)) + temb        per norm k: a rank-r (LoRA-shaped) correction of temb

``F`` is 1 (one time per example) or the number of latent frames (one time per frame, broadcast over the frame's
tokens). A block, with ``LN`` the affine-free LayerNorm (eps 1e-6) and ``m(x) = LN(x)(1 + scale) + shift``:

    x <- x + p                                           p: the learnable extra position embedding (if any)
    x <- x + gate_1 SelfAttn(m_1(x); RoPE 3D)
    x <- x + gate_2 CrossAttn(m_2(x), context)           no RoPE; the only place the text enters
    x <- x + gate_3 W_o gelu(W_i m_3(x))                 exact GELU

Every projection is bias-free; q and k get a per-head RMSNorm (eps 1e-5, learned scale) before the rotation.
Tokens are ``(t, h, w)`` row-major over the patch grid, ``x: (B, N, D)``, ``N = T' H' W'``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.models.embeddings import timestep_features
from mmdit_jax.models.layers import Dense, RMSNorm, backend_attention, layer_norm

Array = jax.Array
Dtype = Any

QK_NORM_EPS = 1e-5        # diffusers' Attention default (the QK RMSNorm); every other norm uses 1e-6


# ------------------------------------------------------------------------------------------------
# 3D rotary position embedding (rotate-half layout)


def rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """``(d_t, d_h, d_w)``: ``d_h = d_w = 2 floor(head_dim / 6)``, ``d_t`` the rest (128 -> 44, 42, 42)."""
    d_hw = head_dim // 6 * 2
    return head_dim - 2 * d_hw, d_hw, d_hw


def rope_tables_3d(grid: Sequence[int], head_dim: int, rope_scale: Sequence[float], fps: float | None = None,
                   base_fps: int = 24) -> tuple[Array, Array]:
    """``(cos, sin)``, each ``(T' H' W', head_dim)`` float32, of the ``(T', H', W')`` token grid.

    Per axis ``a`` with ``d_a`` dims: ``theta_a = 10000 s_a^(d_a / (d_a - 2))`` (NTK-aware scaling by
    ``rope_scale``), ``w_k = theta_a^(-2k / d_a)``, ``k < d_a / 2``; position ``i`` of the axis has angles
    ``i w_k``, the time axis ``i base_fps / fps`` when ``fps`` is given (video) and ``i`` otherwise. The angles of
    the three axes are concatenated ``[t, h, w]`` and the whole repeated twice (rotate-half layout,
    ``apply_rope_half``).

    The frequencies and angles follow diffusers' float32 arithmetic step by step (numpy float32 on the host);
    cos / sin are the correctly rounded float32 of those angles.
    """
    dims = rope_axes_dims(head_dim)
    angles = []
    for axis, (n, d, s) in enumerate(zip(grid, dims, rope_scale)):
        theta = np.float32(10000.0 * float(s) ** (d / (d - 2)))
        freqs = np.float32(1.0) / np.power(theta, np.arange(0, d, 2, dtype=np.float32)[: d // 2] / np.float32(d))
        pos = np.arange(n, dtype=np.float32)
        if axis == 0 and fps is not None:
            pos = pos / np.float32(fps) * np.float32(base_fps)
        angles.append(np.outer(pos, freqs).astype(np.float32))
    t, h, w = (a.shape[0] for a in angles)
    full = np.concatenate([
        np.broadcast_to(angles[0][:, None, None], (t, h, w, angles[0].shape[1])),
        np.broadcast_to(angles[1][None, :, None], (t, h, w, angles[1].shape[1])),
        np.broadcast_to(angles[2][None, None, :], (t, h, w, angles[2].shape[1]))], axis=-1).reshape(t * h * w, -1)
    full = np.concatenate([full, full], axis=-1).astype(np.float64)
    return jnp.asarray(np.cos(full).astype(np.float32)), jnp.asarray(np.sin(full).astype(np.float32))


def apply_rope_half(u: Array, cos: Array, sin: Array) -> Array:
    """Rotate ``u: (B, L, H, d)`` by ``cos, sin: (L, d)`` pairing dim ``j`` with ``j + d/2``; float32 maths, cast
    back (diffusers' ``apply_rotary_emb`` with ``use_real_unbind_dim=-2``):

        out = u cos + rot(u) sin,   rot(u) = [-u_{d/2:}, u_{:d/2}]
    """
    uf = u.astype(jnp.float32)
    half = u.shape[-1] // 2
    rotated = jnp.concatenate([-uf[..., half:], uf[..., :half]], axis=-1)
    return (uf * cos[None, :, None, :] + rotated * sin[None, :, None, :]).astype(u.dtype)


# ------------------------------------------------------------------------------------------------
# Embeddings


class LearnablePositionEmbedding(nn.Module):
    """``p(i, j, k) = e / (eps + |e| / sqrt(D))``, ``e = P_t[i] + P_h[j] + P_w[k]``: the sum of three learned
    per-axis tables, RMS-normalised (eps outside the root) in float32. ``grid = (T', H', W')`` -> ``(N, D)``.

    The tables hold ``max_grid`` rows each; a larger grid has no embedding (the caller checks).
    """

    hidden: int
    max_grid: tuple[int, int, int]
    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, grid: tuple[int, int, int]) -> Array:
        # diffusers initialises zeros, whose normalisation has an infinite slope: train from small random tables
        init = nn.initializers.normal(0.02)
        tables = [self.param(f"pos_emb_{a}", init, (n, self.hidden), self.param_dtype).astype(jnp.float32)
                  for a, n in zip("thw", self.max_grid)]
        t, h, w = grid
        e = (tables[0][:t, None, None] + tables[1][None, :h, None] + tables[2][None, None, :w]).reshape(-1, self.hidden)
        norm = jnp.sqrt(jnp.sum(jnp.square(e), axis=-1, keepdims=True))
        return e / (self.eps + norm * np.float32(np.sqrt(1.0 / self.hidden)))


class TimeEmbedding(nn.Module):
    """``t: (B, F) -> (temb (B, F, 3D), e (B, F, D))`` (module docstring); diffusers' ``CosmosEmbedding``."""

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: Array) -> tuple[Array, Array]:
        b, f = t.shape
        phi = timestep_features(t.reshape(-1), self.hidden).astype(self.dtype)
        temb = _TimestepMLP(self.hidden, self.dtype, self.param_dtype, name="t_embedder")(phi)
        e = RMSNorm(1e-6, param_dtype=self.param_dtype, name="norm")(phi)
        return temb.reshape(b, f, -1), e.reshape(b, f, -1)


class _TimestepMLP(nn.Module):
    """``W_2 silu(W_1 phi)``, bias-free, ``D -> D -> 3D`` (diffusers' ``CosmosTimestepEmbedding``)."""

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, phi: Array) -> Array:
        dense = lambda n, name: Dense(n, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                      name=name)
        return dense(3 * self.hidden, "linear_2")(nn.silu(dense(self.hidden, "linear_1")(phi)))


# ------------------------------------------------------------------------------------------------
# AdaLN-LoRA


def per_frame(x: Array, m: Array) -> tuple[Array, Array]:
    """``x: (B, N, D)`` viewed as ``(B, F, N/F, D)`` and ``m: (B, F, D')`` as ``(B, F, 1, D')``, so one row of
    ``m`` acts on the tokens of its frame (``F = 1``: on all of them)."""
    b, n, d = x.shape
    f = m.shape[1]
    return x.reshape(b, f, n // f, d), m[:, :, None, :]


class AdaLNLoRA(nn.Module):
    """``x: (B, N, D), e: (B, F, D), temb: (B, F, 3D) -> (LN(x)(1 + scale) + shift, gate | None)``.

    ``(shift, scale[, gate]) = linear_2(linear_1(silu(e))) + temb[..., :chunks D]`` with ``linear_1: D -> r``,
    ``linear_2: r -> chunks D``, both bias-free (diffusers' ``CosmosAdaLayerNormZero``, ``chunks = 3``, and
    ``CosmosAdaLayerNorm``, ``chunks = 2``: the output norm, no gate). ``gate: (B, F, D)``.
    """

    rank: int
    chunks: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, e: Array, temb: Array) -> tuple[Array, Array | None]:
        d = x.shape[-1]
        dense = lambda n, name: Dense(n, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                      name=name)
        mod = dense(self.chunks * d, "linear_2")(dense(self.rank, "linear_1")(nn.silu(e))) + temb[..., :self.chunks * d]
        parts = jnp.split(mod, self.chunks, axis=-1)
        xs, scale = per_frame(layer_norm(x, 1e-6), parts[1])
        _, shift = per_frame(x, parts[0])
        return (xs * (1 + scale) + shift).reshape(x.shape), (parts[2] if self.chunks == 3 else None)


def gated(x: Array, gate: Array, y: Array) -> Array:
    """``x + gate y`` with ``gate: (B, F, D)`` per frame, ``x, y: (B, N, D)``."""
    ys, g = per_frame(y, gate)
    return x + (g * ys).reshape(x.shape)


# ------------------------------------------------------------------------------------------------
# Attention and the block


class CosmosAttention(nn.Module):
    """``softmax(q k^T / sqrt(d)) v`` with bias-free ``to_q, to_k, to_v, to_out`` and per-head RMS QK-norm.

    ``x: (B, N, D)``, ``c: (B, S, d_c) | None`` (None: self-attention), ``rope = (cos, sin) | None`` (applied to
    q and k after the norm), ``mask: (B, S) bool | None`` (True: attend; cross-attention only) -> ``(B, N, D)``.
    """

    num_heads: int
    head_dim: int
    attention_impl: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, c: Array | None = None, rope: tuple[Array, Array] | None = None,
                 mask: Array | None = None) -> Array:
        width = self.num_heads * self.head_dim
        dense = lambda n, name: Dense(n, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                      name=name)
        src = x if c is None else c
        heads = lambda a: a.reshape(a.shape[:2] + (self.num_heads, self.head_dim))  # noqa: E731
        q = RMSNorm(QK_NORM_EPS, param_dtype=self.param_dtype, name="norm_q")(heads(dense(width, "to_q")(x)))
        k = RMSNorm(QK_NORM_EPS, param_dtype=self.param_dtype, name="norm_k")(heads(dense(width, "to_k")(src)))
        v = heads(dense(width, "to_v")(src))
        if rope is not None:
            q, k = apply_rope_half(q, *rope), apply_rope_half(k, *rope)
        if mask is not None:  # only the XLA path takes a mask
            o = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :].astype(bool))
        else:
            if self.attention_impl == "cudnn":
                q, k, v = (a.astype(self.dtype) for a in (q, k, v))
            o = backend_attention(q, k, v, self.attention_impl)
        return dense(x.shape[-1], "to_out")(o.reshape(o.shape[:2] + (width,)))


class CosmosBlock(nn.Module):
    """diffusers' ``CosmosTransformerBlock`` (module docstring): ``x: (B, N, D)``, ``context: (B, S, d_text)``,
    ``e: (B, F, D)``, ``temb: (B, F, 3D)``, ``cos, sin: (N, head_dim)``, ``extra_pos: (N, D) | None``,
    ``mask: (B, S) | None`` -> ``(B, N, D)``."""

    num_heads: int
    head_dim: int
    mlp_ratio: float = 4.0
    adaln_lora_dim: int = 256
    attention_impl: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array, e: Array, temb: Array, cos: Array, sin: Array,
                 extra_pos: Array | None = None, mask: Array | None = None) -> Array:
        d = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = dict(num_heads=self.num_heads, head_dim=self.head_dim, attention_impl=self.attention_impl, **kw)
        if extra_pos is not None:
            x = x + extra_pos[None].astype(x.dtype)
        h, gate = AdaLNLoRA(self.adaln_lora_dim, name="norm1", **kw)(x, e, temb)
        x = gated(x, gate, CosmosAttention(**attn, name="attn1")(h, rope=(cos, sin)))
        h, gate = AdaLNLoRA(self.adaln_lora_dim, name="norm2", **kw)(x, e, temb)
        x = gated(x, gate, CosmosAttention(**attn, name="attn2")(h, context, mask=mask))
        h, gate = AdaLNLoRA(self.adaln_lora_dim, name="norm3", **kw)(x, e, temb)
        dense = lambda n, name: Dense(n, use_bias=False, name=name, **kw)  # noqa: E731
        ff = dense(d, "ff_out")(jax.nn.gelu(dense(int(d * self.mlp_ratio), "ff_in")(h), approximate=False))
        return gated(x, gate, ff)
