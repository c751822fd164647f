"""The blocks of HiDream-I1 (diffusers' ``HiDreamImageTransformerBlock`` / ``...SingleTransformerBlock``).

Sequences are image first: a double block attends over ``[img (N); txt (T)]``, a single block over the joined
``x = [img; txt]``. RoPE rotates the first ``N`` tokens (the image, ``cos, sin: (N, r)``); text ids are zero, so
the rotation is the identity there and is skipped. ``r = head_dim`` rotates whole heads, ``r = head_dim / 2``
the first half of each head (diffusers' two cases).

Attention (``HiDreamAttention``), per stream ``s``:

    q_s = RMSNorm(W_q^s u_s + b),  k_s = RMSNorm(W_k^s u_s + b)      the norm over all H d channels, eps 1e-5
    k_img <- k_img * m                                               m (B, N): the padding mask, multiplicative
    o = softmax(q k^T / sqrt(d)) v  over [img; txt];  out_s = W_o^s o_s + b

A masked key is zero, not removed: it still takes ``exp(0)`` of the softmax mass (diffusers' semantics).

Blocks (adaLN-Zero, LayerNorm without affine, eps 1e-6; ``c = silu(temb)``):

    double: (sh, sc, g) x {attn, mlp} x {img, txt} = chunks of W c + b  (12 D, that order: image first)
        img += g_a^i attn_i(mod(LN img)),  txt += g_a^t attn_t(mod(LN txt))
        img += g_m^i MoE(mod(LN img)),     txt += g_m^t SwiGLU(mod(LN txt))
    single: (sh, sc, g) x {attn, mlp} = chunks of W c + b  (6 D)
        x += g_a attn(mod(LN x));  x += g_m MoE(mod(LN x))         (the MoE runs on text tokens too)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.models.layers import Dense, RMSNorm, backend_attention, layer_norm, modulate
from mmdit_jax.models.moe import MoEFeedForward, SwiGLU, swiglu_hidden
from mmdit_jax.models.rope import apply_rope

Array = jax.Array
Dtype = Any


def rope_prefix(u: Array, cos: Array, sin: Array) -> Array:
    """RoPE on the first ``N`` tokens of ``u (B, L, H, d)`` (``cos, sin: (N, r)``), over the first ``r`` channels
    of each head (``r = d`` or ``d / 2``); the rest unchanged."""
    n, r = cos.shape
    head, tail = u[:, :n], u[:, n:]
    rotated = apply_rope(head[..., :r], cos, sin)
    if r < u.shape[-1]:
        rotated = jnp.concatenate([rotated, head[..., r:]], axis=-1)
    return jnp.concatenate([rotated, tail], axis=1) if tail.shape[1] else rotated


class HiDreamAttention(nn.Module):
    """``x: (B, L, D)`` (image, or the joined sequence when ``single``), ``c: (B, T, D) | None`` (text),
    ``mask: (B, L) | None`` on the keys of ``x`` -> ``(out_x, out_c | None)``."""

    num_heads: int
    head_dim: int
    single: bool = False
    attention_impl: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _qkv(self, u: Array, suffix: str) -> tuple[Array, Array, Array]:
        width = self.num_heads * self.head_dim
        dense = lambda name: Dense(width, dtype=self.dtype, param_dtype=self.param_dtype,  # noqa: E731
                                   name=name + suffix)
        norm = lambda name: RMSNorm(1e-5, self.param_dtype, name=name + suffix)  # noqa: E731
        heads = lambda a: a.reshape(u.shape[:2] + (self.num_heads, self.head_dim))  # noqa: E731
        q = norm("q_rms_norm")(dense("to_q")(u))
        k = norm("k_rms_norm")(dense("to_k")(u))
        return heads(q), heads(k), heads(dense("to_v")(u))

    @nn.compact
    def __call__(self, x: Array, c: Array | None, mask: Array | None, cos: Array,
                 sin: Array) -> tuple[Array, Array | None]:
        q, k, v = self._qkv(x, "")
        if mask is not None:
            k = k * mask[:, :, None, None].astype(k.dtype)
        if not self.single:
            qt, kt, vt = self._qkv(c, "_t")
            q, k, v = (jnp.concatenate(p, axis=1) for p in ((q, qt), (k, kt), (v, vt)))
        q, k = rope_prefix(q, cos, sin), rope_prefix(k, cos, sin)
        if self.attention_impl == "cudnn":
            q, k, v = (a.astype(self.dtype) for a in (q, k, v))
        o = backend_attention(q, k, v, self.attention_impl)
        o = o.reshape(o.shape[:2] + (self.num_heads * self.head_dim,))
        dense = lambda name: Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        if self.single:
            return dense("to_out")(o), None
        o_x, o_c = jax.lax.split(o, (x.shape[1], c.shape[1]), axis=1)
        return dense("to_out")(o_x), dense("to_out_t")(o_c)


class _BlockBase(nn.Module):
    num_heads: int
    head_dim: int
    num_experts: int = 4            # 0: the image MLP is a plain SwiGLU
    top_k: int = 2
    attention_impl: str = "xla"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def ff_image(self, d: int) -> nn.Module:
        numerics = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.num_experts:
            return MoEFeedForward(self.num_experts, self.top_k, swiglu_hidden(4 * d), swiglu_hidden(2 * d),
                                  **numerics, name="ff_i")
        return SwiGLU(swiglu_hidden(4 * d), **numerics, name="ff_i")

    def attention(self, single: bool) -> HiDreamAttention:
        return HiDreamAttention(self.num_heads, self.head_dim, single=single, attention_impl=self.attention_impl,
                                dtype=self.dtype, param_dtype=self.param_dtype, name="attn1")

    def modulation(self, temb: Array, chunks: int) -> list[Array]:
        out = Dense(chunks * temb.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                    name="adaLN_modulation")(nn.silu(temb))
        return jnp.split(out, chunks, axis=-1)


class DoubleStreamBlock(_BlockBase):
    """``img: (B, N, D)``, ``txt: (B, T, D)``, ``mask: (B, N) | None``, ``temb: (B, D)``, ``cos, sin: (N, r)``
    -> ``(img, txt)`` (module docstring)."""

    @nn.compact
    def __call__(self, img: Array, txt: Array, mask: Array | None, temb: Array, cos: Array,
                 sin: Array) -> tuple[Array, Array]:
        d = img.shape[-1]
        (sh_a, sc_a, g_a, sh_m, sc_m, g_m,
         sh_at, sc_at, g_at, sh_mt, sc_mt, g_mt) = self.modulation(temb, 12)
        attn_i, attn_t = self.attention(single=False)(
            modulate(layer_norm(img), sh_a, sc_a), modulate(layer_norm(txt), sh_at, sc_at), mask, cos, sin)
        img = img + g_a[:, None] * attn_i
        txt = txt + g_at[:, None] * attn_t
        ff_i = self.ff_image(d)(modulate(layer_norm(img), sh_m, sc_m))
        ff_t = SwiGLU(swiglu_hidden(4 * d), self.dtype, self.param_dtype, name="ff_t")(
            modulate(layer_norm(txt), sh_mt, sc_mt))
        return img + g_m[:, None] * ff_i, txt + g_mt[:, None] * ff_t


class SingleStreamBlock(_BlockBase):
    """``x: (B, L, D)`` (``[img; txt]``), ``mask: (B, L) | None``, ``temb: (B, D)``, ``cos, sin: (N, r)`` ->
    ``(B, L, D)`` (module docstring)."""

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, temb: Array, cos: Array, sin: Array) -> Array:
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = self.modulation(temb, 6)
        attn, _ = self.attention(single=True)(modulate(layer_norm(x), sh_a, sc_a), None, mask, cos, sin)
        x = x + g_a[:, None] * attn
        return x + g_m[:, None] * self.ff_image(x.shape[-1])(modulate(layer_norm(x), sh_m, sc_m))
