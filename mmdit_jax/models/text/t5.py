"""T5 encoder (transformers' ``T5EncoderModel``): v1.1 (``feed_forward_proj="gated-gelu"``) and v1.0 (``"relu"``).

    h_0 = E[ids];  bias = RelPos(buckets(k - q))  (from the first layer, shared by all)
    h' = h + O(softmax(Q K^T + bias) V)        with Q, K, V of RMSNorm(h)   (no 1/sqrt(d) scaling)
    h  = h' + W_o (gelu_tanh(W_0 u) * W_1 u),  u = RMSNorm(h')              v1.1 (SD3, FLUX: T5-XXL); no biases
    h  = h' + W_o relu(W_i u)                                               v1.0 (Cosmos: t5-11b)
    last = RMSNorm_final(h_L)

``hidden_states = (h_0, ..., h_{L-1}, last)`` as transformers returns them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.models.layers import Dense, RMSNorm
from mmdit_jax.checks import check_choice, check_positive_int

Array = jax.Array

# transformers' names: gated-gelu (v1.1: wi_0, wi_1, wo) | relu (v1.0: wi, wo)
FEED_FORWARD_PROJS = ("gated-gelu", "relu")


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    def validate(self) -> None:
        for f in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            check_positive_int(f"t5.{f}", getattr(self, f))
        check_choice("t5.feed_forward_proj", self.feed_forward_proj, FEED_FORWARD_PROJS)


T5_XXL = T5Config()
T5_TINY = T5Config(vocab_size=500, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4)


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> Array:
    """Bidirectional T5 buckets of ``k - q``: ``(q_len, k_len)`` ints (half the buckets for each sign)."""
    rel = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(jnp.int32) * half
    rel = jnp.abs(rel)
    max_exact = half // 2
    large = max_exact + (jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact)
                         / math.log(max_distance / max_exact) * (half - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, half - 1)
    return buckets + jnp.where(rel < max_exact, rel, large)


class T5Layer(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, bias: Array) -> Array:
        cfg = self.config
        dense = lambda n, name: Dense(n, use_bias=False, dtype=self.dtype, name=name)  # noqa: E731
        u = RMSNorm(cfg.layer_norm_epsilon, name="attn_norm")(h)
        q, k, v = (dense(cfg.num_heads * cfg.d_kv, n)(u).reshape(u.shape[:2] + (cfg.num_heads, cfg.d_kv)) for n in "qkv")
        o = jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype), scale=1.0)
        h = h + dense(cfg.d_model, "o")(o.reshape(u.shape[:2] + (-1,)))
        u = RMSNorm(cfg.layer_norm_epsilon, name="ff_norm")(h)
        if cfg.feed_forward_proj == "relu":
            inner = jax.nn.relu(dense(cfg.d_ff, "wi")(u))
        else:
            inner = jax.nn.gelu(dense(cfg.d_ff, "wi_0")(u), approximate=True) * dense(cfg.d_ff, "wi_1")(u)
        return h + dense(cfg.d_model, "wo")(inner)


class T5Encoder(nn.Module):
    """``ids: (B, T) int -> dict(last_hidden_state, hidden_states)``; no attention mask (as SD3 uses it)."""

    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: Array) -> dict[str, Any]:
        cfg = self.config
        h = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=self.dtype, name="shared")(ids)
        table = self.param("relative_attention_bias", nn.initializers.normal(0.02),
                           (cfg.relative_attention_num_buckets, cfg.num_heads))
        t = ids.shape[1]
        buckets = relative_position_buckets(t, t, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance)
        bias = jnp.transpose(table[buckets], (2, 0, 1))[None]          # (1, H, T, T)
        hidden = []
        for i in range(cfg.num_layers):
            hidden.append(h)
            h = T5Layer(cfg, self.dtype, name=f"block_{i}")(h, bias)
        last = RMSNorm(cfg.layer_norm_epsilon, name="final_layer_norm")(h)
        return {"last_hidden_state": last, "hidden_states": tuple(hidden) + (last,)}
