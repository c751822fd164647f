"""Cosmos-Predict2 (NVIDIA), diffusers' ``CosmosTransformer3DModel``, as Flax Linen modules (maths: docs/cosmos.md).

    x'      = [x ; m]                                 (B, T, H, W, C + 1)    m: the padding mask (zeros for T2I)
    tokens  = patchify(x')                            (B, N, (C + 1) p_t p_h p_w),  features (c, p_t, p_h, p_w)
    h       = W_in tokens                             (B, N, D)              bias-free
    temb, e = TimeEmbedding(t)                        (B, F, 3D), (B, F, D)  F = 1, or T for per-frame times
    h       = CosmosBlock_i(h, context, e, temb, RoPE_3D, p),  i < L         (models/cosmos_blocks.py)
    out     = unpatchify(W_out (LN(h)(1 + scale) + shift))                   (shift, scale) = AdaLN-LoRA_out(e, temb)

There is no pooled text vector: the adaLN conditioning is a function of ``t`` alone (in the notation of the
pooled-CLIP study ``y = e_t``) and the text reaches the image only through the cross-attention to ``context``.

Channels last: ``x: (B, T, H, W, C)`` where diffusers takes ``(B, C, T, H, W)``; an image is ``T = 1``.
Unpatchify is not the inverse of patchify: the output projection's features are ordered ``(p_h, p_w, p_t, c)``,
the input's ``(c, p_t, p_h, p_w)`` (``patchify`` / ``unpatchify``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_keys, check_positive, check_positive_int
from mmdit_jax.models.cosmos_blocks import (
    AdaLNLoRA, CosmosBlock, LearnablePositionEmbedding, TimeEmbedding, rope_axes_dims, rope_tables_3d,
)
from mmdit_jax.models.layers import Dense
from mmdit_jax.models.numerics import DTYPES, REMAT_POLICIES, attention_path, check_numerics

Array = jax.Array

ATTENTION_IMPLS = ("xla", "cudnn", "chunked", "einsum")
EXTRA_POS_EMBED_TYPES = (None, "learnable")


@dataclasses.dataclass(frozen=True)
class CosmosConfig:
    """Architecture and numerics; the defaults are Cosmos-Predict2 2B. ``hidden = num_heads * head_dim``.

    ``in_channels`` / ``out_channels`` are latent channels (the padding-mask channel is added on top when
    ``concat_padding_mask``); ``max_size`` is in latent pixels and bounds only the learnable position embedding.
    """

    in_channels: int = 16
    out_channels: int = 16
    num_heads: int = 16
    head_dim: int = 128
    num_layers: int = 28
    mlp_ratio: float = 4.0
    text_embed_dim: int = 1024                   # T5 v1.0 11B's d_model
    adaln_lora_dim: int = 256
    max_size: tuple[int, int, int] = (128, 240, 240)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    rope_scale: tuple[float, float, float] = (1.0, 4.0, 4.0)
    concat_padding_mask: bool = True
    extra_pos_embed_type: str | None = None      # None (Predict2) | 'learnable' (Cosmos 1.0)
    base_fps: int = 24                           # video RoPE: the time axis is scaled by base_fps / fps
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "full"
    scan_blocks: bool = False
    scan_unroll: int = 1
    attention_impl: str | None = None            # None: cuDNN on a GPU in bf16/fp16, else XLA

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    @classmethod
    def from_dict(cls, d: Any) -> "CosmosConfig":
        d = dict(d)
        check_keys("model (cosmos)", d, {f.name for f in dataclasses.fields(cls)})
        for f in ("max_size", "patch_size"):
            if f in d:
                d[f] = tuple(int(a) for a in d[f])
        if "rope_scale" in d:
            d["rope_scale"] = tuple(float(a) for a in d["rope_scale"])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in ("in_channels", "out_channels", "num_heads", "head_dim", "num_layers", "text_embed_dim",
                  "adaln_lora_dim", "base_fps", "scan_unroll"):
            check_positive_int(f"model.{f}", getattr(self, f))
        check_positive("model.mlp_ratio", self.mlp_ratio)
        for f in ("max_size", "patch_size", "rope_scale"):
            v = getattr(self, f)
            if not isinstance(v, tuple) or len(v) != 3:
                raise ConfigError(f"model.{f} must be a (t, h, w) triple, got {v!r}")
        for i, axis in enumerate("thw"):
            check_positive_int(f"model.patch_size[{axis}]", self.patch_size[i])
            check_positive_int(f"model.max_size[{axis}]", self.max_size[i])
            check_positive(f"model.rope_scale[{axis}]", self.rope_scale[i])
        if self.head_dim % 2 or self.head_dim < 12:
            raise ConfigError(f"model.head_dim={self.head_dim} must be even and >= 12: RoPE gives (t, h, w) "
                              f"{rope_axes_dims(max(self.head_dim, 0))} dims and each needs more than 2")
        if self.extra_pos_embed_type not in EXTRA_POS_EMBED_TYPES:
            raise ConfigError(f"model.extra_pos_embed_type={self.extra_pos_embed_type!r} is not valid; choose one "
                              f"of {list(EXTRA_POS_EMBED_TYPES)}")
        check_numerics(self, ATTENTION_IMPLS)

    def attention_backend(self) -> str:
        """``attention_impl``, or the platform's choice for None (``numerics.attention_path``)."""
        return attention_path(self)

    def block_kwargs(self) -> dict[str, Any]:
        return dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_ratio=self.mlp_ratio,
                    adaln_lora_dim=self.adaln_lora_dim, attention_impl=self.attention_backend(),
                    dtype=DTYPES[self.dtype], param_dtype=DTYPES[self.param_dtype])

    def block_module(self) -> type[nn.Module]:
        return nn.remat(CosmosBlock, policy=REMAT_POLICIES[self.remat_policy]) if self.remat else CosmosBlock


COSMOS_PREDICT2_2B = CosmosConfig()
COSMOS_PREDICT2_14B = CosmosConfig(num_heads=40, num_layers=36)
PRESETS = {"predict2-2b": COSMOS_PREDICT2_2B, "predict2-14b": COSMOS_PREDICT2_14B}


# ------------------------------------------------------------------------------------------------
# Patches


def patchify(x: Array, patch_size: tuple[int, int, int]) -> Array:
    """``(B, T, H, W, C) -> (B, T' H' W', C p_t p_h p_w)``: tokens row-major over ``(t, h, w)``, each token's
    features in ``(c, p_t, p_h, p_w)`` order (diffusers' ``CosmosPatchEmbed``)."""
    b, t, h, w, c = x.shape
    pt, ph, pw = patch_size
    x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(tokens: Array, grid: tuple[int, int, int], patch_size: tuple[int, int, int]) -> Array:
    """``(B, T' H' W', p_h p_w p_t C) -> (B, T, H, W, C)``: each token's features in ``(p_h, p_w, p_t, c)`` order
    (diffusers' output reshape), not the input's ``(c, p_t, p_h, p_w)``."""
    b = tokens.shape[0]
    (gt, gh, gw), (pt, ph, pw) = grid, patch_size
    c = tokens.shape[-1] // (pt * ph * pw)
    x = tokens.reshape(b, gt, gh, gw, ph, pw, pt, c).transpose(0, 1, 6, 2, 4, 3, 5, 7)
    return x.reshape(b, gt * pt, gh * ph, gw * pw, c)


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source rows of a nearest-neighbour resize ``size_in -> size_out``: ``floor(i size_in / size_out)`` with
    the float32 scale of torch's ``interpolate(mode="nearest")`` (torchvision's ``resize``, NEAREST)."""
    scale = np.float32(size_in) / np.float32(size_out)
    return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64), size_in - 1)


def resize_padding_mask(mask: Array, height: int, width: int) -> Array:
    """``(1 | B, H_m, W_m) -> (1 | B, H, W)`` by nearest neighbour (the pipeline passes it at pixel size)."""
    rows, cols = nearest_indices(mask.shape[1], height), nearest_indices(mask.shape[2], width)
    return mask[:, rows][:, :, cols]


# ------------------------------------------------------------------------------------------------
# The model


class _ScanBody(nn.Module):
    config: CosmosConfig

    @nn.compact
    def __call__(self, x: Array, context: Array, e: Array, temb: Array, cos: Array, sin: Array,
                 extra_pos: Array | None, mask: Array | None) -> tuple[Array, None]:
        block = self.config.block_module()(**self.config.block_kwargs(), name="block")
        return block(x, context, e, temb, cos, sin, extra_pos, mask), None


class CosmosTransformer(nn.Module):
    """``(x: (B, T, H, W, C), timestep: (B,) | (B, T), context: (B, S, text_embed_dim)) -> (B, T, H, W, C_out)``;
    diffusers' ``CosmosTransformer3DModel.forward`` (Predict2: no controlnet, image context or cross-attention
    projection).

    ``timestep``: the model's ``t`` itself (the Predict2 pipeline passes ``sigma / (sigma + 1)``), one per example,
    or one per frame (``(B, T)``, ``p_t = 1``). ``padding_mask: (1 | B, H_m, W_m) | None``: resized by nearest
    neighbour to ``(H, W)`` and concatenated as a channel of every frame (None: zeros, as the pipeline passes).
    ``context_mask: (B, S) bool | None``: True for the text tokens to attend to (the pipeline passes none and
    zeroes the padded tokens instead). ``fps``: frames per second of a clip (time RoPE positions scaled by
    ``base_fps / fps``); None for images.
    """

    config: CosmosConfig

    def _check_inputs(self, x: Array, timestep: Array, context: Array) -> tuple[int, int, int]:
        cfg = self.config
        if x.ndim != 5 or x.shape[-1] != cfg.in_channels:
            raise ConfigError(f"x must be (B, T, H, W, {cfg.in_channels}) for model.in_channels={cfg.in_channels}, "
                              f"got shape {x.shape}")
        if any(n % p for n, p in zip(x.shape[1:4], cfg.patch_size)):
            raise ConfigError(f"x's (T, H, W) = {x.shape[1:4]} must be multiples of model.patch_size={cfg.patch_size}")
        if context.ndim != 3 or context.shape[-1] != cfg.text_embed_dim:
            raise ConfigError(f"context must be (B, S, {cfg.text_embed_dim}) for model.text_embed_dim="
                              f"{cfg.text_embed_dim}, got shape {context.shape}")
        grid = tuple(n // p for n, p in zip(x.shape[1:4], cfg.patch_size))
        if jnp.ndim(timestep) == 2 and (cfg.patch_size[0] != 1 or jnp.shape(timestep)[1] != x.shape[1]):
            raise ConfigError(f"per-frame timesteps must be (B, T={x.shape[1]}) with model.patch_size[0] = 1, got "
                              f"shape {jnp.shape(timestep)} and patch_size {cfg.patch_size}")
        if jnp.ndim(timestep) > 2:
            raise ConfigError(f"timestep must be (B,) or (B, T), got shape {jnp.shape(timestep)}")
        if cfg.extra_pos_embed_type == "learnable":
            limit = tuple(m // p for m, p in zip(cfg.max_size, cfg.patch_size))
            if any(g > m for g, m in zip(grid, limit)):
                raise ConfigError(f"the token grid {grid} exceeds the learnable position tables {limit} "
                                  f"(model.max_size={cfg.max_size} / model.patch_size={cfg.patch_size})")
        return grid  # type: ignore[return-value]

    @nn.compact
    def __call__(self, x: Array, timestep: Array, context: Array, *, padding_mask: Array | None = None,
                 context_mask: Array | None = None, fps: float | None = None) -> Array:
        cfg = self.config
        grid = self._check_inputs(x, timestep, context)
        dtype, pdtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        b, frames, height, width, _ = x.shape
        d = cfg.hidden
        dense = lambda f, name: Dense(f, use_bias=False, dtype=dtype, param_dtype=pdtype, name=name)  # noqa: E731

        x = x.astype(dtype)
        if cfg.concat_padding_mask:
            m = jnp.zeros((1, height, width), dtype) if padding_mask is None else \
                resize_padding_mask(jnp.asarray(padding_mask, dtype), height, width)
            x = jnp.concatenate([x, jnp.broadcast_to(m[:, None, :, :, None], (b, frames, height, width, 1))], -1)
        h = dense(d, "patch_embed")(patchify(x, cfg.patch_size))

        cos, sin = rope_tables_3d(grid, cfg.head_dim, cfg.rope_scale, fps, cfg.base_fps)
        extra = None
        if cfg.extra_pos_embed_type == "learnable":
            limit = tuple(m // p for m, p in zip(cfg.max_size, cfg.patch_size))
            extra = LearnablePositionEmbedding(d, limit, param_dtype=pdtype, name="learnable_pos_embed")(grid)
            extra = extra.astype(dtype)

        t = jnp.asarray(timestep, jnp.float32)
        t = jnp.broadcast_to(t, (b,))[:, None] if t.ndim < 2 else t
        temb, e = TimeEmbedding(d, dtype, pdtype, name="time_embed")(t)
        context = context.astype(dtype)

        if cfg.scan_blocks:
            body = nn.scan(_ScanBody, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=(nn.broadcast,) * 7, length=cfg.num_layers,
                           unroll=min(cfg.scan_unroll, cfg.num_layers))
            h, _ = body(cfg, name="transformer_blocks")(h, context, e, temb, cos, sin, extra, context_mask)
        else:
            block = cfg.block_module()
            for i in range(cfg.num_layers):
                h = block(**cfg.block_kwargs(), name=f"transformer_blocks_{i}")(
                    h, context, e, temb, cos, sin, extra, context_mask)

        h, _ = AdaLNLoRA(cfg.adaln_lora_dim, chunks=2, dtype=dtype, param_dtype=pdtype, name="norm_out")(h, e, temb)
        out = dense(cfg.patch_volume * cfg.out_channels, "proj_out")(h)
        return unpatchify(out, grid, cfg.patch_size)


# ------------------------------------------------------------------------------------------------
# Counting


def abstract_variables(cfg: CosmosConfig, text_tokens: int = 8) -> Any:
    """Shapes and dtypes of ``CosmosTransformer(cfg).init`` via ``jax.eval_shape`` (no memory allocated). With
    ``scan_blocks`` one block is traced, so counting a deep preset takes a fraction of a second."""
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    x = f32(1, *cfg.patch_size, cfg.in_channels)
    return jax.eval_shape(CosmosTransformer(cfg).init, jax.random.PRNGKey(0), x, f32(1),
                          f32(1, text_tokens, cfg.text_embed_dim))


def cosmos_forward_flops(cfg: CosmosConfig, batch: int, frames: int, height: int, width: int,
                         text_tokens: int, per_frame_time: bool = False) -> int:
    """Matmul FLOPs (multiply-add = 2) of one forward pass on ``(batch, frames, height, width, C)`` latents and
    ``text_tokens`` context tokens: projections, feed-forwards, AdaLN-LoRA, attention scores and values."""
    lin = lambda n, a, o: 2 * n * a * o  # noqa: E731
    att = lambda q, k, w: 4 * q * k * w  # noqa: E731
    d, r = cfg.hidden, cfg.adaln_lora_dim
    n = math.prod(s // p for s, p in zip((frames, height, width), cfg.patch_size))
    f = frames if per_frame_time else 1
    mlp = int(d * cfg.mlp_ratio)
    c_in = cfg.in_channels + int(cfg.concat_padding_mask)
    total = lin(n, c_in * cfg.patch_volume, d) + lin(f, d, d) + lin(f, d, 3 * d)
    block = 3 * (lin(f, d, r) + lin(f, r, 3 * d))                                # AdaLN-LoRA
    block += 4 * lin(n, d, d) + att(n, n, d)                                     # self-attention
    block += 2 * lin(n, d, d) + 2 * lin(text_tokens, cfg.text_embed_dim, d) + att(n, text_tokens, d)
    block += 2 * lin(n, d, mlp)
    total += cfg.num_layers * block + lin(f, d, r) + lin(f, r, 2 * d) + lin(n, d, cfg.patch_volume * cfg.out_channels)
    return batch * total


# ------------------------------------------------------------------------------------------------
# Parameter layouts: unrolled ``transformer_blocks_{i}`` <-> scanned ``transformer_blocks/block`` (leading axis i)


def is_scanned(variables: dict[str, Any]) -> bool:
    return "transformer_blocks" in variables["params"]


def stack_blocks(variables: dict[str, Any], cfg: CosmosConfig) -> dict[str, Any]:
    """Unrolled -> scanned layout (for ``scan_blocks=True``)."""
    params = dict(variables["params"])
    blocks = [params.pop(f"transformer_blocks_{i}") for i in range(cfg.num_layers)]
    params["transformer_blocks"] = {"block": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)}
    return {**variables, "params": params}


def unstack_blocks(variables: dict[str, Any], cfg: CosmosConfig) -> dict[str, Any]:
    """Scanned -> unrolled layout (the inverse of ``stack_blocks``)."""
    params = dict(variables["params"])
    stacked = params.pop("transformer_blocks")["block"]
    for i in range(cfg.num_layers):
        params[f"transformer_blocks_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], stacked)
    return {**variables, "params": params}
