"""The blocks of FLUX.1 (maths: docs/flux.md §2): joint attention with RoPE, double-stream and single-stream blocks.

Sequences are text first: the joined sequence is ``[txt; img]`` of length ``L = T + N`` and the RoPE tables
``cos, sin: (L, head_dim)`` follow that order. Parameter names follow diffusers' ``FluxTransformer2DModel``
(``attn.to_q`` ..., ``norm1``, ``ff`` ...), so the converter (``interop/flux.py``) is a renaming.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.models.layers import (
    Dense, DenseParams, FeedForward, RMSNorm, backend_attention, layer_norm, modulate,
)
from mmdit_jax.models.rope import apply_rope

Array = jax.Array
Dtype = Any


def dot_product_attention(q: Array, k: Array, v: Array, implementation: str) -> Array:
    """``softmax(q k^T / sqrt(d)) v``; ``q, k, v: (B, L, H, d)``, through the shared ``layers.backend_attention``.
    ``implementation``: 'xla', 'cudnn' (the sequence padded to a multiple of 64 and masked: cuDNN's flash kernel
    rejects odd lengths, and FLUX's 512 + N text-plus-image lengths are often odd multiples) or 'chunked' (memory
    linear in the sequence length, autodiff gradients: long clips)."""
    return backend_attention(q, k, v, implementation)


class FluxAttention(nn.Module):
    """Attention with per-head RMS QK-norm and RoPE, optionally joint with a text stream.

    ``x: (B, N, D)`` (image, or the joined sequence in a single-stream block), ``c: (B, T, D) | None`` (text).
    Joint: ``q = [norm_added_q(add_q_proj c); norm_q(to_q x)]`` (text first), likewise k, v; RoPE on q, k; one
    softmax over all ``T + N`` keys; outputs split and projected by ``to_add_out`` (text) and ``to_out`` (image).
    ``pre_only`` (single-stream blocks): no output projection, the heads' concatenation ``(B, N, D)`` is returned.
    ``fused = (kernel (D, F), bias (F,))``: a projection of ``x`` computed in the same product as q, k, v (the
    single-stream block's MLP input, BFL's ``linear1``); its output ``(B, N, F)`` is returned as the third value.

    Returns ``(out_x, out_c | None, fused_out | None)``.
    """

    num_heads: int
    head_dim: int
    joint: bool = False
    pre_only: bool = False
    attention_impl: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _project(self, names: tuple[str, str, str], norms: tuple[str, str], u: Array,
                 fused: tuple[Array, Array] | None = None) -> tuple[Array, Array, Array, Array | None]:
        width = self.num_heads * self.head_dim
        params = [DenseParams(width, self.param_dtype, name=n)(u.shape[-1]) for n in names]
        if fused is not None:
            params.append(fused)
        kernel = jnp.concatenate([p[0] for p in params], axis=1).astype(self.dtype)
        bias = jnp.concatenate([p[1] for p in params]).astype(self.dtype)
        out = jnp.dot(u.reshape(-1, u.shape[-1]).astype(self.dtype), kernel) + bias
        out = out.reshape(u.shape[:2] + (-1,))
        sizes = [width] * 3 + ([fused[0].shape[1]] if fused is not None else [])
        parts = jax.lax.split(out, sizes, axis=-1)
        heads = lambda a: a.reshape(u.shape[:2] + (self.num_heads, self.head_dim))  # noqa: E731
        q = RMSNorm(param_dtype=self.param_dtype, name=norms[0])(heads(parts[0]))
        k = RMSNorm(param_dtype=self.param_dtype, name=norms[1])(heads(parts[1]))
        return q, k, heads(parts[2]), (parts[3] if fused is not None else None)

    @nn.compact
    def __call__(self, x: Array, c: Array | None, cos: Array, sin: Array,
                 fused: tuple[Array, Array] | None = None) -> tuple[Array, Array | None, Array | None]:
        q, k, v, extra = self._project(("to_q", "to_k", "to_v"), ("norm_q", "norm_k"), x, fused)
        if self.joint:
            cq, ck, cv, _ = self._project(("add_q_proj", "add_k_proj", "add_v_proj"),
                                          ("norm_added_q", "norm_added_k"), c)
            q, k, v = (jnp.concatenate([a, b], axis=1) for a, b in ((cq, q), (ck, k), (cv, v)))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = dot_product_attention(q, k, v, self.attention_impl)
        o = o.reshape(o.shape[:2] + (self.num_heads * self.head_dim,))
        if self.pre_only:
            return o, None, extra
        dense = lambda name: Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        if not self.joint:
            return dense("to_out")(o), None, extra
        t = c.shape[1]
        o_c, o_x = jax.lax.split(o, (t, o.shape[1] - t), axis=1)
        return dense("to_out")(o_x), dense("to_add_out")(o_c), extra


class DoubleStreamBlock(nn.Module):
    """diffusers ``FluxTransformerBlock`` / BFL ``DoubleStreamBlock``: per-stream adaLN-Zero (``norm1``,
    ``norm1_context``: ``Linear(D -> 6D)(silu(y))`` = shift, scale, gate for attention, then for the MLP), joint
    attention, gated residuals, per-stream GELU-tanh MLPs (``ff``, ``ff_context``).

    ``img: (B, N, D)``, ``txt: (B, T, D)``, ``y: (B, D)``, ``cos, sin: (T + N, head_dim)`` -> ``(img, txt)``.
    """

    num_heads: int
    head_dim: int
    mlp_ratio: int = 4
    attention_impl: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, img: Array, txt: Array, y: Array, cos: Array, sin: Array) -> tuple[Array, Array]:
        d = img.shape[-1]
        act = nn.silu(y)
        dense = lambda n, name: Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = jnp.split(dense(6 * d, "norm1")(act), 6, axis=-1)
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = jnp.split(
            dense(6 * d, "norm1_context")(act), 6, axis=-1)
        attn_img, attn_txt, _ = FluxAttention(
            self.num_heads, self.head_dim, joint=True, attention_impl=self.attention_impl, dtype=self.dtype,
            param_dtype=self.param_dtype, name="attn")(
            modulate(layer_norm(img), shift, scale), modulate(layer_norm(txt), c_shift, c_scale), cos, sin)
        ff = dict(mult=self.mlp_ratio, dtype=self.dtype, param_dtype=self.param_dtype)
        img = img + gate[:, None] * attn_img
        img = img + gate_mlp[:, None] * FeedForward(name="ff", **ff)(modulate(layer_norm(img), shift_mlp, scale_mlp))
        txt = txt + c_gate[:, None] * attn_txt
        txt = txt + c_gate_mlp[:, None] * FeedForward(name="ff_context", **ff)(
            modulate(layer_norm(txt), c_shift_mlp, c_scale_mlp))
        return img, txt


class SingleStreamBlock(nn.Module):
    """diffusers ``FluxSingleTransformerBlock`` / BFL ``SingleStreamBlock`` on the joined ``x = [txt; img]``:

        (shift, scale, gate) = norm(silu(y));   h = LN(x) (1 + scale) + shift
        x <- x + gate proj_out([attn(h); gelu_tanh(proj_mlp h)])

    q, k, v and ``proj_mlp`` are one product (BFL's ``linear1``). ``x: (B, L, D)``, ``cos, sin: (L, head_dim)``.
    """

    num_heads: int
    head_dim: int
    mlp_ratio: int = 4
    attention_impl: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, y: Array, cos: Array, sin: Array) -> Array:
        d = x.shape[-1]
        dense = lambda n, name: Dense(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        shift, scale, gate = jnp.split(dense(3 * d, "norm")(nn.silu(y)), 3, axis=-1)
        mlp_params = DenseParams(self.mlp_ratio * d, self.param_dtype, name="proj_mlp")(d)
        attn, _, mlp = FluxAttention(self.num_heads, self.head_dim, pre_only=True, attention_impl=self.attention_impl,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name="attn")(
            modulate(layer_norm(x), shift, scale), None, cos, sin, fused=mlp_params)
        out = dense(d, "proj_out")(jnp.concatenate([attn, jax.nn.gelu(mlp, approximate=True)], axis=-1))
        return x + gate[:, None] * out
