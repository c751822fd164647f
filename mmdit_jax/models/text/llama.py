"""Llama-3 decoder stack as a text encoder (transformers' ``LlamaModel``), all hidden states out.

    h_0 = E[ids]                                                          (B, T) -> (B, T, D)
    h_l = h' + W_down (silu(W_gate u) * W_up u),  u = RMSNorm_2(h')        (SwiGLU, no biases)
    h'  = h_{l-1} + W_o Attn(RMSNorm_1(h_{l-1}))                           l = 1 .. L
    last = RMSNorm_final(h_L)

Attention: grouped-query, ``H`` query heads share ``K`` key/value heads (``H / K`` queries per group), head dim
``d``; queries and keys rotated by RoPE in rotate-half form at positions ``p = 0 .. T-1``:

    rot(u) = [-u_2; u_1]  (u = [u_1; u_2], halves of d),   u' = u cos(p w) + rot(u) sin(p w),  w_k = theta^(-2k/d)

``rope_type="llama3"`` rescales the frequencies (Llama 3.1): with wavelength ``lambda_k = 2 pi / w_k``,
``L_lo = L_0 / f_lo`` and ``L_hi = L_0 / f_hi`` (``L_0`` the original context length),

    w_k' = w_k                                  lambda_k < L_hi
    w_k' = w_k / s                              lambda_k > L_lo
    w_k' = (1 - g) w_k / s + g w_k,  g = (L_0 / lambda_k - f_lo) / (f_hi - f_lo)   otherwise

The mask is causal and, given ``attention_mask (B, T)`` (1 = token, 0 = padding), hides padded keys; it is
applied as an additive ``finfo.min`` like transformers' eager path, so a fully masked row is uniform there too.

``hidden_states = (h_0, h_1, .., h_{L-1}, last)``: transformers' ``output_hidden_states=True`` (the last one
after the final norm). HiDream reads ``hidden_states[1:]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_choice, check_positive, check_positive_int
from mmdit_jax.models.layers import Dense, RMSNorm

Array = jax.Array

ROPE_TYPES = ("default", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture; the defaults are Llama-3.1-8B. ``head_dim=None``: ``hidden_size / num_heads``."""

    vocab_size: int = 128256
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_type: str = "llama3"                    # 'default' (plain RoPE) | 'llama3' (frequency rescaling)
    rope_factor: float = 8.0                     # llama3: s
    rope_low_freq_factor: float = 1.0            # llama3: f_lo
    rope_high_freq_factor: float = 4.0           # llama3: f_hi
    rope_original_max_positions: int = 8192      # llama3: L_0
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def validate(self) -> None:
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            check_positive_int(f"llama.{f}", getattr(self, f))
        if self.head_dim is not None:
            check_positive_int("llama.head_dim", self.head_dim)
        elif self.hidden_size % self.num_heads:
            raise ConfigError(f"llama.hidden_size={self.hidden_size} is not divisible by llama.num_heads="
                              f"{self.num_heads}; give llama.head_dim")
        if self.dim_head % 2:
            raise ConfigError(f"llama head dim {self.dim_head} must be even (RoPE rotates halves)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"llama.num_heads={self.num_heads} must be a multiple of llama.num_kv_heads="
                              f"{self.num_kv_heads} (grouped-query attention)")
        for f in ("rms_norm_eps", "rope_theta"):
            check_positive(f"llama.{f}", getattr(self, f))
        check_choice("llama.rope_type", self.rope_type, ROPE_TYPES)
        if self.rope_type == "llama3":
            for f in ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
                check_positive(f"llama.{f}", getattr(self, f))
            check_positive_int("llama.rope_original_max_positions", self.rope_original_max_positions)
            if self.rope_high_freq_factor <= self.rope_low_freq_factor:
                raise ConfigError(f"llama.rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
                                  f"llama.rope_low_freq_factor={self.rope_low_freq_factor}")


LLAMA_31_8B = LlamaConfig()
LLAMA_TINY = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                         num_kv_heads=2, rope_original_max_positions=16)


def rope_inverse_frequencies(cfg: LlamaConfig) -> np.ndarray:
    """``w'_k``, ``k < d/2``, float32 (module docstring), formed in float32 in transformers' order."""
    d = cfg.dim_head
    inv = np.float32(1.0) / (np.float32(cfg.rope_theta) ** (np.arange(0, d, 2).astype(np.float32) / np.float32(d)))
    if cfg.rope_type == "default":
        return inv
    s, lo, hi = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    l0 = cfg.rope_original_max_positions
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > l0 / lo, inv / np.float32(s), inv).astype(np.float32)
    g = ((np.float32(l0) / wavelen - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)
    smoothed = (1 - g) * scaled / np.float32(s) + g * scaled
    medium = ~(wavelen < l0 / hi) & ~(wavelen > l0 / lo)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_half_tables(cfg: LlamaConfig, length: int) -> tuple[Array, Array]:
    """``(cos, sin)``, each ``(T, d)`` float32: angles ``p w'_k`` for ``p < T``, the ``d/2`` values repeated as
    ``[a; a]`` (rotate-half layout)."""
    angles = np.arange(length, dtype=np.float32)[:, None] * rope_inverse_frequencies(cfg)[None]
    angles = np.concatenate([angles, angles], axis=-1)
    return jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))


def apply_rope_half(u: Array, cos: Array, sin: Array) -> Array:
    """``u cos + rot(u) sin`` with ``rot([u_1; u_2]) = [-u_2; u_1]``; ``u: (B, T, H, d)``, ``cos, sin: (T, d)``."""
    u1, u2 = jnp.split(u, 2, axis=-1)
    rotated = jnp.concatenate([-u2, u1], axis=-1)
    return u * cos[None, :, None].astype(u.dtype) + rotated * sin[None, :, None].astype(u.dtype)


def attention_mask_bias(attention_mask: Array | None, length: int, dtype: Any) -> Array:
    """Additive ``(B | 1, 1, T, T)`` bias: 0 where query ``i`` may read key ``j`` (``j <= i`` and ``j`` not
    padding), ``finfo(dtype).min`` elsewhere."""
    allowed = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:
        allowed = allowed & (attention_mask[:, None, None, :] > 0)
    return jnp.where(allowed, 0.0, jnp.finfo(dtype).min).astype(dtype)


class LlamaLayer(nn.Module):
    """One decoder layer (module docstring). ``h: (B, T, D)``, ``bias: (B | 1, 1, T, T)`` -> ``(B, T, D)``."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, bias: Array, cos: Array, sin: Array) -> Array:
        cfg = self.config
        d, groups = cfg.dim_head, cfg.num_heads // cfg.num_kv_heads
        dense = lambda n, name, b: Dense(n, use_bias=b, dtype=self.dtype, name=name)  # noqa: E731
        b, t = h.shape[:2]
        u = RMSNorm(cfg.rms_norm_eps, name="input_layernorm")(h)
        q = dense(cfg.num_heads * d, "q_proj", cfg.attention_bias)(u).reshape(b, t, cfg.num_heads, d)
        k = dense(cfg.num_kv_heads * d, "k_proj", cfg.attention_bias)(u).reshape(b, t, cfg.num_kv_heads, d)
        v = dense(cfg.num_kv_heads * d, "v_proj", cfg.attention_bias)(u).reshape(b, t, cfg.num_kv_heads, d)
        q, k = apply_rope_half(q, cos, sin), apply_rope_half(k, cos, sin)
        # query head n reads key/value head n // groups (transformers' repeat_kv)
        q = q.reshape(b, t, cfg.num_kv_heads, groups, d)
        logits = jnp.einsum("bqkgd,bskd->bkgqs", q, k).astype(jnp.float32) / math.sqrt(d)
        logits = logits + bias[:, :, None].astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        o = jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, t, cfg.num_heads * d)
        h = h + dense(cfg.hidden_size, "o_proj", cfg.attention_bias)(o)
        u = RMSNorm(cfg.rms_norm_eps, name="post_attention_layernorm")(h)
        gated = nn.silu(dense(cfg.intermediate_size, "gate_proj", cfg.mlp_bias)(u)) \
            * dense(cfg.intermediate_size, "up_proj", cfg.mlp_bias)(u)
        return h + dense(cfg.hidden_size, "down_proj", cfg.mlp_bias)(gated)


class LlamaModel(nn.Module):
    """``ids: (B, T) int, attention_mask: (B, T) | None -> dict(last_hidden_state (B, T, D), hidden_states)``,
    ``hidden_states`` a tuple of ``L + 1`` arrays ``(B, T, D)`` (module docstring)."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: Array, attention_mask: Array | None = None) -> dict[str, Any]:
        cfg = self.config
        if ids.ndim != 2:
            raise ConfigError(f"Llama ids must be (B, T), got shape {ids.shape}")
        if attention_mask is not None and attention_mask.shape != ids.shape:
            raise ConfigError(f"Llama attention_mask must be (B, T) = {ids.shape}, got {attention_mask.shape}")
        h = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, name="embed_tokens")(ids)
        cos, sin = rope_half_tables(cfg, ids.shape[1])
        bias = attention_mask_bias(attention_mask, ids.shape[1], jnp.float32)
        hidden = [h]
        for i in range(cfg.num_layers):
            h = LlamaLayer(cfg, self.dtype, name=f"layers_{i}")(h, bias, cos, sin)
            hidden.append(h)
        last = RMSNorm(cfg.rms_norm_eps, name="norm")(h)
        return {"last_hidden_state": last, "hidden_states": tuple(hidden[:-1]) + (last,)}
