"""Counting without running: analytic FLOPs of each model's forward pass, and parameter counts of pytrees.

FLOPs (multiply-add = 2 FLOPs) of the forward pass; a train step is ~3x the forward. Only matrix products are
counted (projections, MLPs, attention scores and values, patch embedding, adaLN); norms, activations and softmax
add a few percent, which is why tests compare with XLA's cost analysis to a tolerance rather than exactly.

Parameters: ``num_parameters`` counts the scalars of any pytree, concrete or abstract (``jax.eval_shape``), so a
model's size is known without allocating it.

Configs are imported for type checking only: this module imports no model, so any module may count with it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
    from mmdit_jax.models.flux import FluxConfig
    from mmdit_jax.models.mmdit import MMDiTConfig
    from mmdit_jax.models.text.clip import CLIPTextConfig
    from mmdit_jax.models.text.t5 import T5Config


def num_parameters(tree: Any) -> int:
    """Number of scalars in a pytree (a model's params, an adapter, an optimizer state); leaves need only a
    ``shape``, so abstract trees from ``jax.eval_shape`` count too."""
    return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _attention(q_len: int, k_len: int, width: int) -> int:
    return 2 * 2 * q_len * k_len * width          # Q K^T and A V


def mmdit_forward_flops(cfg: MMDiTConfig, batch: int, height: int, width: int, text_tokens: int,
                        frames: int = 0) -> int:
    """Matmul FLOPs of one MMDiT forward pass on ``(batch, height, width, C)`` images (``frames > 0``: clips
    ``(batch, frames, height, width, C)``) and ``text_tokens`` tokens."""
    d, p = cfg.hidden, cfg.patch_size
    pt = cfg.temporal_patch_size if frames else 1
    n = max(frames // pt, 1) * (height // p) * (width // p)
    t = text_tokens
    f = _linear(n, cfg.in_channels * pt * p * p, d)                             # patch embedding
    f += _linear(1, 256, d) + _linear(1, d, d)                                  # timestep MLP
    if cfg.use_pooled:
        f += _linear(1, cfg.pooled_projection_dim, d) + _linear(1, d, d)
    f += _linear(t, cfg.joint_attention_dim, d)                                 # context embedder
    for i in range(cfg.num_layers):
        last, dual = i == cfg.num_layers - 1, i in cfg.dual_attention_layers
        f += _linear(1, d, (9 if dual else 6) * d) + _linear(1, d, (2 if last else 6) * d)   # adaLN
        f += _linear(n, d, 3 * d) + _linear(t, d, 3 * d)                        # q, k, v of both streams
        f += _attention(n + t, n + t, d)
        f += _linear(n, d, d) + (0 if last else _linear(t, d, d))               # output projections
        f += 2 * _linear(n, d, cfg.mlp_ratio * d)                               # image MLP
        if not last:
            f += 2 * _linear(t, d, cfg.mlp_ratio * d)                           # context MLP
        if dual:
            f += _linear(n, d, 3 * d) + _attention(n, n, d) + _linear(n, d, d)
    f += _linear(1, d, 2 * d) + _linear(n, d, pt * p * p * cfg.out_channels)    # final layer
    return batch * f


def flux_forward_flops(cfg: FluxConfig, batch: int, height: int, width: int, text_tokens: int) -> int:
    """Matmul FLOPs of one FLUX.1 forward pass on ``(batch, height, width, C)`` latents (``N = H/2 * W/2`` packed
    tokens) and ``text_tokens`` text tokens: projections, MLPs, adaLN, attention scores and values."""
    d, n, t = cfg.hidden, (height // 2) * (width // 2), text_tokens
    length, mlp = n + t, cfg.mlp_ratio * d
    attention = _attention(length, length, d)                             # over the joined [txt; img]
    f = _linear(n, cfg.in_channels, d) + _linear(t, cfg.joint_attention_dim, d)
    f += _linear(1, 256, d) + _linear(1, d, d) + _linear(1, cfg.pooled_projection_dim, d) + _linear(1, d, d)
    if cfg.guidance_embeds:
        f += _linear(1, 256, d) + _linear(1, d, d)
    double = 2 * _linear(1, d, 6 * d) + _linear(length, d, 3 * d) + attention + _linear(length, d, d) \
        + 2 * _linear(length, d, mlp)
    single = _linear(1, d, 3 * d) + _linear(length, d, 3 * d + mlp) + attention + _linear(length, d + mlp, d)
    f += cfg.num_layers * double + cfg.num_single_layers * single
    f += _linear(1, d, 2 * d) + _linear(n, d, cfg.out_channels)
    return batch * f


def clip_forward_flops(cfg: CLIPTextConfig, batch: int, tokens: int) -> int:
    d = cfg.hidden_size
    per_layer = _linear(tokens, d, 3 * d) + _attention(tokens, tokens, d) + _linear(tokens, d, d) \
        + _linear(tokens, d, cfg.intermediate_size) + _linear(tokens, cfg.intermediate_size, d)
    proj = _linear(1, d, cfg.projection_dim) if cfg.projection_dim else 0
    return batch * (cfg.num_layers * per_layer + proj)


def t5_forward_flops(cfg: T5Config, batch: int, tokens: int) -> int:
    inner = cfg.num_heads * cfg.d_kv
    input_projections = 1 if cfg.feed_forward_proj == "relu" else 2   # v1.0: W_i; v1.1 (gated): W_0 and W_1
    per_layer = _linear(tokens, cfg.d_model, 3 * inner) + _attention(tokens, tokens, inner) \
        + _linear(tokens, inner, cfg.d_model) + input_projections * _linear(tokens, cfg.d_model, cfg.d_ff) \
        + _linear(tokens, cfg.d_ff, cfg.d_model)
    return batch * cfg.num_layers * per_layer
