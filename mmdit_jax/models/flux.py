"""FLUX.1 (Black Forest Labs), diffusers' ``FluxTransformer2DModel``, as Flax Linen modules (maths: docs/flux.md).

    img     = x_embedder(packed latents)                                (B, N, 4C) -> (B, N, D)
    txt     = context_embedder(context)                                 (B, T, d_ctx) -> (B, T, D)
    y       = e_t(1000 t) [+ e_g(1000 g)] + h_y(pooled)                 (B, D)
    cos,sin = RoPE tables of ids = [txt_ids; img_ids]                   (T + N, head_dim)
    (img, txt) = DoubleStreamBlock_i(img, txt, y), i < num_layers
    x       = SingleStreamBlock_j([txt; img], y), j < num_single_layers
    out     = proj_out(LN(x_img) (1 + scale) + shift),  (scale, shift) = norm_out(silu(y))   -> (B, N, C_out)

The model works on packed tokens like diffusers; ``pack_latents`` / ``unpack_latents`` / ``latent_image_ids``
convert NHWC latents ``(B, H, W, C)`` (H, W even) to the ``(B, H/2 * W/2, 4C)`` tokens (per token ``(c, ph, pw)``,
diffusers' ``_pack_latents``) and their ``(index=0, row, col)`` ids.

Video (docs/flux.md "Video"): ``pack_clip`` / ``unpack_clip`` / ``latent_clip_ids`` convert clips ``(B, T, H, W, C)``
to ``(B, T/p_t * H/2 * W/2, p_t * 4C)`` tokens (``p_t = temporal_patch_size`` frames per token, time outermost,
each frame's features in the image order) and their ``(t, row, col)`` ids on the same three RoPE axes, so frame 0
of a clip has exactly the image ids and a one-frame clip (``p_t = 1``) is an image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_keys, check_positive_int
from mmdit_jax.models.conditioning import Interventions, check_conditioning, conditioning_vector
from mmdit_jax.models.flux_blocks import DoubleStreamBlock, SingleStreamBlock
from mmdit_jax.models.image_stream import TokenGroup
from mmdit_jax.models.layers import Dense, layer_norm, modulate
from mmdit_jax.models.numerics import DTYPES, REMAT_POLICIES, attention_path, check_numerics
from mmdit_jax.models.rope import grid_ids, rope_tables

Array = jax.Array

# The FLUX blocks have no hand-written gradients, so the einsum paths (whose point is the CPU custom gradient) are
# not offered; 'chunked' is the linear-memory path for long clips.
ATTENTION_IMPLS = ("xla", "cudnn", "chunked")


@dataclasses.dataclass(frozen=True)
class FluxConfig:
    """Architecture and numerics; the defaults are FLUX.1-dev. ``hidden = num_heads * head_dim``.

    ``in_channels`` / ``out_channels`` are the packed token widths (the rows of ``x_embedder``, the columns of
    ``proj_out``), as in diffusers' config: a token is ``temporal_patch_size`` frames x 2 x 2 latent pixels, so both
    are ``4 * temporal_patch_size * C`` for ``C`` latent channels (in_channels twice that for a model that also
    reads an image concatenated to its input). With ``temporal_patch_size = 1`` (images, and clips patched frame by
    frame) they are the image model's ``4C`` and its weights apply unchanged. Counting the whole token keeps the
    model, its converters and its parameter and FLOP counts unaware of the temporal patching.
    """

    in_channels: int = 64
    out_channels: int = 64
    temporal_patch_size: int = 1                 # video: frames per token (1: every frame packed like an image)
    num_layers: int = 19                         # double-stream blocks
    num_single_layers: int = 38                  # single-stream blocks
    num_heads: int = 24
    head_dim: int = 128
    joint_attention_dim: int = 4096              # width of the text tokens (T5-XXL)
    pooled_projection_dim: int = 768             # width of the pooled text vector (CLIP-L pooler output)
    guidance_embeds: bool = True                 # guidance-distilled (dev): y also embeds the guidance scale
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)   # RoPE dims per id axis; sums to head_dim
    rope_theta: float = 10000.0
    mlp_ratio: int = 4
    dtype: str = "float32"                       # compute dtype
    param_dtype: str = "float32"
    remat: bool = False                          # rematerialise each block in the backward pass
    remat_policy: str = "full"                   # with remat: what each block keeps (numerics.REMAT_POLICIES)
    scan_blocks: bool = False                    # nn.scan over the double and over the single blocks
    scan_unroll: int = 1
    attention_impl: str | None = None            # None: cuDNN on a GPU in bf16/fp16, else XLA | 'xla' | 'cudnn'

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def latent_channels(self) -> int:
        # the output's: a channel-concatenating model (FLUX.1 Fill, InstructPix2Pix-style editing) reads more
        return self.out_channels // (4 * self.temporal_patch_size)

    @classmethod
    def from_dict(cls, d: Any) -> "FluxConfig":
        d = dict(d)
        check_keys("model (flux)", d, {f.name for f in dataclasses.fields(cls)})
        if "axes_dims_rope" in d:
            d["axes_dims_rope"] = tuple(int(a) for a in d["axes_dims_rope"])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in ("in_channels", "out_channels", "temporal_patch_size", "num_layers", "num_heads", "head_dim",
                  "joint_attention_dim", "pooled_projection_dim", "mlp_ratio", "scan_unroll"):
            check_positive_int(f"model.{f}", getattr(self, f))
        if not isinstance(self.num_single_layers, int) or self.num_single_layers < 0:
            raise ConfigError(f"model.num_single_layers must be a non-negative int, got {self.num_single_layers!r}")
        pt = self.temporal_patch_size
        for f in ("in_channels", "out_channels"):
            if getattr(self, f) % (4 * pt):
                raise ConfigError(f"model.{f}={getattr(self, f)} must be 4 x model.temporal_patch_size={pt} x the "
                                  "latent channels (a token packs temporal_patch_size frames of 2x2 latent pixels)")
        dims = tuple(self.axes_dims_rope)
        if any(int(a) <= 0 or int(a) % 2 for a in dims) or sum(dims) != self.head_dim:
            raise ConfigError(f"model.axes_dims_rope={dims} must be positive even dims summing to model.head_dim="
                              f"{self.head_dim}")
        check_numerics(self, ATTENTION_IMPLS)

    def attention_backend(self) -> str:
        """``attention_impl``, or the platform's choice for None (``numerics.attention_path``)."""
        return attention_path(self)

    def block_kwargs(self) -> dict[str, Any]:
        return dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_ratio=self.mlp_ratio,
                    attention_impl=self.attention_backend(), dtype=DTYPES[self.dtype],
                    param_dtype=DTYPES[self.param_dtype])

    def block_module(self, block: type[nn.Module]) -> type[nn.Module]:
        """``block``, rematerialised under ``remat_policy`` when ``remat`` is on."""
        return nn.remat(block, policy=REMAT_POLICIES[self.remat_policy]) if self.remat else block


# ------------------------------------------------------------------------------------------------
# Packing and ids


def pack_latents(x: Array) -> Array:
    """``(B, H, W, C) -> (B, H/2 * W/2, 4C)``: 2x2 patches, row-major over the ``(H/2, W/2)`` grid, each token's
    features in ``(c, ph, pw)`` order (diffusers' ``_pack_latents`` on NCHW, BFL's
    ``b c (h ph) (w pw) -> b (h w) (c ph pw)``)."""
    b, height, width, c = x.shape
    x = x.reshape(b, height // 2, 2, width // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (height // 2) * (width // 2), 4 * c)


def unpack_latents(tokens: Array, height: int, width: int) -> Array:
    """The inverse of ``pack_latents``: ``(B, H/2 * W/2, 4C) -> (B, H, W, C)``."""
    b, _, f = tokens.shape
    c = f // 4
    x = tokens.reshape(b, height // 2, width // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, height, width, c)


def latent_image_ids(height: int, width: int, index: int = 0) -> np.ndarray:
    """``(H/2 * W/2, 3)`` float32 ids ``(index, row, col)`` of the packed tokens of an ``(H, W)`` latent (diffusers'
    ``_prepare_latent_image_ids``; ``index`` 0 for the generated image, e.g. 1 for a Kontext reference)."""
    h, w = height // 2, width // 2
    ids = np.zeros((h, w, 3), np.float32)
    ids[..., 0] = index
    ids[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    ids[..., 2] = np.arange(w, dtype=np.float32)[None, :]
    return ids.reshape(h * w, 3)


def pack_clip(x: Array, temporal_patch_size: int = 1) -> Array:
    """``(B, T, H, W, C) -> (B, T/p_t * H/2 * W/2, p_t * 4C)``, ``p_t = temporal_patch_size``: tokens ordered
    ``(t, i, j)`` row-major (time outermost, then the image's row-major grid), each token's features
    ``(f, c, ph, pw)``: the ``p_t`` frames' image features (``pack_latents``) one after the other. With ``p_t = 1``
    frame ``t``'s tokens are exactly ``pack_latents(x[:, t])``."""
    b, frames, height, width, c = x.shape
    pt = temporal_patch_size
    if frames % pt:
        raise ConfigError(f"a clip of {frames} frames is not divisible by model.temporal_patch_size={pt}")
    x = x.reshape(b, frames // pt, pt, height // 2, 2, width // 2, 2, c).transpose(0, 1, 3, 5, 2, 7, 4, 6)
    return x.reshape(b, (frames // pt) * (height // 2) * (width // 2), pt * 4 * c)


def unpack_clip(tokens: Array, frames: int, height: int, width: int, temporal_patch_size: int = 1) -> Array:
    """The inverse of ``pack_clip``: ``(B, T/p_t * H/2 * W/2, p_t * 4C) -> (B, T, H, W, C)``."""
    b, _, f = tokens.shape
    pt = temporal_patch_size
    c = f // (4 * pt)
    x = tokens.reshape(b, frames // pt, height // 2, width // 2, pt, c, 2, 2).transpose(0, 1, 4, 2, 6, 3, 7, 5)
    return x.reshape(b, frames, height, width, c)


def latent_clip_ids(frames: int, height: int, width: int, temporal_patch_size: int = 1, first: int = 0) -> np.ndarray:
    """``(T/p_t * H/2 * W/2, 3)`` float32 ids ``(t, row, col)`` of ``pack_clip``'s tokens, ``t = first, first + 1,
    ..`` counting temporal patches (``first``: the temporal patches of context frames before the clip). With
    ``first = 0`` the first temporal patch has exactly ``latent_image_ids(H, W)``."""
    if frames % temporal_patch_size:
        raise ConfigError(f"a clip of {frames} frames is not divisible by model.temporal_patch_size="
                          f"{temporal_patch_size}")
    return grid_ids((frames // temporal_patch_size, height // 2, width // 2), (first, 0, 0))


def group_ids(group: TokenGroup, temporal_patch_size: int = 1) -> np.ndarray:
    """The RoPE ids ``(f, row, col)`` of a group of the image stream (``models/image_stream.py``) at its frame
    ``f``: an image's ``latent_image_ids(H, W, index=f)``, a clip's ``latent_clip_ids(.., first=f)``."""
    latents, frame = group
    if latents.ndim == 4:
        return latent_image_ids(latents.shape[1], latents.shape[2], index=frame)
    return latent_clip_ids(latents.shape[1], latents.shape[2], latents.shape[3], temporal_patch_size, frame)


def text_ids(tokens: int) -> np.ndarray:
    """``(T, 3)`` zero ids of the text tokens (RoPE is the identity on them)."""
    return np.zeros((tokens, 3), np.float32)


# ------------------------------------------------------------------------------------------------
# The model


class _DoubleScanBody(nn.Module):
    config: FluxConfig

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], y: Array, cos: Array, sin: Array) -> tuple[tuple[Array, Array], None]:
        block = self.config.block_module(DoubleStreamBlock)(**self.config.block_kwargs(), name="block")
        return block(*carry, y, cos, sin), None


class _SingleScanBody(nn.Module):
    config: FluxConfig

    @nn.compact
    def __call__(self, x: Array, y: Array, cos: Array, sin: Array) -> tuple[Array, None]:
        return self.config.block_module(SingleStreamBlock)(**self.config.block_kwargs(), name="block")(x, y, cos, sin), None


class FluxTransformer(nn.Module):
    """``(tokens: (B, N, in_channels), timestep: (B,), context: (B, T, d_ctx), pooled: (B, d_pool), img_ids: (N, 3),
    txt_ids: (T, 3), guidance: (B,) | None) -> (B, N, out_channels)``; diffusers' ``FluxTransformer2DModel.forward``.

    ``timestep`` and ``guidance`` are in diffusers' units (flow time in [0, 1]; guidance scale, e.g. 3.5); the
    network embeds ``time_scale * timestep`` (float32 product; diffusers and BFL: 1000) and ``1000 guidance``.
    ``img_ids`` / ``txt_ids``: numpy ids give host float64 RoPE tables (diffusers' to the bit), traced ids float32
    ones (``models/rope.py``). ``guidance`` is required exactly when ``guidance_embeds``.

    ``y = e_t [+ e_g] + h_y(pooled)`` (``models/conditioning.py``). ``interventions`` (``Interventions``):
    ``remove_pooled`` (``y = e_t [+ e_g]``; pooled may be None), ``pooled_steering = (p+, p-, w)``; FLUX takes no
    ``skip_layers``. The same switches as keywords (``remove_pooled=True`` ...) build the same ``Interventions``.
    """

    config: FluxConfig

    def _check_inputs(self, tokens: Array, context: Array, pooled: Array | None, guidance: Array | None,
                      interventions: Interventions) -> None:
        cfg = self.config
        if tokens.ndim != 3 or tokens.shape[-1] != cfg.in_channels:
            raise ConfigError(f"tokens must be packed (B, N, {cfg.in_channels}) for model.in_channels="
                              f"{cfg.in_channels}, got shape {tokens.shape}")
        if context.ndim != 3 or context.shape[-1] != cfg.joint_attention_dim:
            raise ConfigError(f"context must be (B, T, {cfg.joint_attention_dim}) for model.joint_attention_dim="
                              f"{cfg.joint_attention_dim}, got shape {context.shape}")
        check_conditioning(interventions, pooled, guidance, tokens.shape[0], cfg.pooled_projection_dim,
                           guidance_embeds=cfg.guidance_embeds)
        if interventions.skip_layers:
            raise ConfigError(f"skip_layers={list(interventions.skip_layers)}: the FLUX transformer cannot skip "
                              "blocks (the sd3 family can)")

    @nn.compact
    def __call__(self, tokens: Array, timestep: Array, context: Array, pooled: Array | None,
                 img_ids: np.ndarray | Array, txt_ids: np.ndarray | Array, guidance: Array | None = None,
                 interventions: Interventions | None = None, *, time_scale: float = 1000.0,
                 **switches: Any) -> Array:
        cfg = self.config
        interventions = Interventions.merge(interventions, **switches)
        self._check_inputs(tokens, context, pooled, guidance, interventions)
        dtype, pdtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        d, b, n = cfg.hidden, tokens.shape[0], tokens.shape[1]
        dense = lambda f, name: Dense(f, dtype=dtype, param_dtype=pdtype, name=name)  # noqa: E731
        if img_ids.shape != (n, len(cfg.axes_dims_rope)) or txt_ids.shape != (context.shape[1], len(cfg.axes_dims_rope)):
            raise ConfigError(f"img_ids / txt_ids must be (N={n}, {len(cfg.axes_dims_rope)}) / (T={context.shape[1]}, "
                              f"{len(cfg.axes_dims_rope)}), got {img_ids.shape} / {txt_ids.shape}")

        img = dense(d, "x_embedder")(tokens.astype(dtype))
        # e_t(time_scale t), e_g(1000 g): the products in float32, as diffusers and BFL form them
        per_example = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (b,))  # noqa: E731
        y = conditioning_vector(
            per_example(timestep) * jnp.float32(time_scale), pooled, hidden=d, dtype=dtype, param_dtype=pdtype,
            pooled_dim=cfg.pooled_projection_dim, interventions=interventions, initializing=self.is_initializing(),
            guidance=per_example(guidance) * jnp.float32(1000.0) if cfg.guidance_embeds else None)
        txt = dense(d, "context_embedder")(context.astype(dtype))

        ids = np.concatenate([np.asarray(txt_ids), np.asarray(img_ids)]) if all(
            isinstance(i, np.ndarray) for i in (txt_ids, img_ids)) else jnp.concatenate([txt_ids, img_ids])
        cos, sin = rope_tables(ids, cfg.axes_dims_rope, cfg.rope_theta)

        if cfg.scan_blocks:
            def scan(body: type[nn.Module], length: int, name: str) -> nn.Module:
                return nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                               in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=length,
                               unroll=min(cfg.scan_unroll, length))(cfg, name=name)
            (img, txt), _ = scan(_DoubleScanBody, cfg.num_layers, "transformer_blocks")((img, txt), y, cos, sin)
            x = jnp.concatenate([txt, img], axis=1)
            if cfg.num_single_layers:
                x, _ = scan(_SingleScanBody, cfg.num_single_layers, "single_transformer_blocks")(x, y, cos, sin)
        else:
            double = cfg.block_module(DoubleStreamBlock)
            for i in range(cfg.num_layers):
                img, txt = double(**cfg.block_kwargs(), name=f"transformer_blocks_{i}")(img, txt, y, cos, sin)
            x = jnp.concatenate([txt, img], axis=1)
            single = cfg.block_module(SingleStreamBlock)
            for i in range(cfg.num_single_layers):
                x = single(**cfg.block_kwargs(), name=f"single_transformer_blocks_{i}")(x, y, cos, sin)

        scale, shift = jnp.split(dense(2 * d, "norm_out")(nn.silu(y)), 2, axis=-1)  # diffusers: scale first
        return dense(cfg.out_channels, "proj_out")(modulate(layer_norm(x[:, context.shape[1]:]), shift, scale))
