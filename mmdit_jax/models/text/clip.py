"""CLIP text transformer (OpenAI CLIP / OpenCLIP as in transformers' ``CLIPTextModelWithProjection``).

    h_0 = E_tok[ids] + E_pos[0..T)                                   (B, T) -> (B, T, D)
    h_l = h' + MLP(LN2(h')),  h' = h_{l-1} + Attn_causal(LN1(h_{l-1}))   l = 1 .. L
    last = LN_final(h_L);  pooled = last[b, eos_position(b)];  text_embeds = pooled @ W_proj (no bias)

``hidden_states = (h_0, h_1, ..., h_L)`` (un-normalised), so ``hidden_states[-2]`` is SD3's penultimate layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.models.layers import Dense
from mmdit_jax.checks import ConfigError, check_choice, check_positive_int

Array = jax.Array

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 77
    projection_dim: int | None = 768      # None: no text projection (CLIPTextModel)
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2                 # 2: legacy configs, EOS found as argmax(ids) (the highest id)

    def validate(self) -> None:
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "max_position_embeddings"):
            check_positive_int(f"clip.{f}", getattr(self, f))
        check_choice("clip.hidden_act", self.hidden_act, ACTIVATIONS)
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"clip.hidden_size {self.hidden_size} is not divisible by clip.num_heads {self.num_heads}")


CLIP_L14 = CLIPTextConfig()
CLIP_G14 = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_layers=32, num_heads=20, projection_dim=1280,
                          hidden_act="gelu")
CLIP_TINY = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=37, num_layers=3, num_heads=4,
                           projection_dim=32)


class CLIPLayer(nn.Module):
    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        cfg = self.config
        ln = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, use_fast_variance=False, name=name)  # noqa: E731
        dense = lambda n, name: Dense(n, dtype=self.dtype, name=name)  # noqa: E731
        u = ln("layer_norm1")(h)
        hd = cfg.hidden_size // cfg.num_heads
        q, k, v = (dense(cfg.hidden_size, f"{n}_proj")(u).reshape(u.shape[:2] + (cfg.num_heads, hd)) for n in "qkv")
        o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(u.shape)
        h = h + dense(cfg.hidden_size, "out_proj")(o)
        u = ln("layer_norm2")(h)
        return h + dense(cfg.hidden_size, "fc2")(ACTIVATIONS[cfg.hidden_act](dense(cfg.intermediate_size, "fc1")(u)))


class CLIPTextModel(nn.Module):
    """``ids: (B, T) int -> dict(last_hidden_state, hidden_states, pooled, text_embeds)``."""

    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, ids: Array) -> dict[str, Any]:
        cfg = self.config
        if ids.ndim != 2 or ids.shape[1] > cfg.max_position_embeddings:
            raise ConfigError(f"CLIP ids must be (B, T) with T <= {cfg.max_position_embeddings}, got {ids.shape}")
        h = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, name="token_embedding")(ids)
        pos = self.param("position_embedding", nn.initializers.normal(0.01),
                         (cfg.max_position_embeddings, cfg.hidden_size))
        h = h + pos[: ids.shape[1]].astype(self.dtype)
        hidden = [h]
        for i in range(cfg.num_layers):
            h = CLIPLayer(cfg, self.dtype, name=f"layers_{i}")(h)
            hidden.append(h)
        last = nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, use_fast_variance=False, name="final_layer_norm")(h)
        if cfg.eos_token_id == 2:
            eos = jnp.argmax(ids, axis=-1)
        else:
            eos = jnp.argmax(ids == cfg.eos_token_id, axis=-1)
        pooled = last[jnp.arange(ids.shape[0]), eos]
        out = {"last_hidden_state": last, "hidden_states": tuple(hidden), "pooled": pooled}
        if cfg.projection_dim:
            out["text_embeds"] = Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype,
                                          name="text_projection")(pooled)
        return out
