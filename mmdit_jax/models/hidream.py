"""HiDream-I1 (diffusers' ``HiDreamImageTransformer2DModel``) as Flax Linen modules.

    img     = x_embedder(patches)                                     (B, S, p^2 C) -> (B, S, D)
    temb    = e_t(t) + h_y(pooled)                                    (B, D); SD3's y, t in [0, 1000)
    c_5     = W_5 T5                                                  (B, T_5, D)
    c_k     = W_k Llama[layer_k],  k < L + S                          (B, T_l, D), one bias-free projection each
    c_0     = [c_5; c_{L+S-1}]                                        the "initial" text tokens (B, T_0, D)
    double i < L:   (img, t) = Double_i(img, [c_0; c_i]),  c_0 <- t[:, :T_0]     (the per-block c_i is dropped)
    x = [img; c_0]
    single j < S:   x <- Single_j([x; c_{L+j}])[:, :S + T_0]
    out     = linear(LN(x_img) (1 + scale) + shift),  (shift, scale) = adaLN(silu(temb))   (B, S, p^2 C_out)

Block maths: ``models/hidream_blocks.py``; mixture of experts: ``models/moe.py``. The final layer's chunk order is
(shift, scale), the reverse of SD3's and FLUX's ``norm_out``.

Patches (``patchify``): a latent ``(B, H, W, C)`` becomes ``S = (H/p)(W/p)`` tokens, row-major, each ``(p, p, C)``
(row in patch, column in patch, channel), with RoPE ids ``(0, row, col)`` (text ids are zero: no rotation). A
non-square latent is zero-padded to ``S_max = R_h R_w / p^2`` tokens (``max_resolution``) with ids 0 and a key
mask ``m (B, S_max)``: 1 on the image, 0 on the padding, extended with ones over the text in the single blocks.
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
from mmdit_jax.models.embeddings import patchify_clip, unpatchify
from mmdit_jax.models.hidream_blocks import DoubleStreamBlock, SingleStreamBlock
from mmdit_jax.models.layers import Dense, layer_norm, modulate
from mmdit_jax.models.numerics import DTYPES, REMAT_POLICIES, attention_path, check_numerics
from mmdit_jax.models.rope import grid_ids, rope_tables

Array = jax.Array

ATTENTION_IMPLS = ("xla", "cudnn", "chunked")
RELEASED_LLAMA_LAYERS = tuple(range(32)) + (31,) * 16


@dataclasses.dataclass(frozen=True)
class HiDreamConfig:
    """Architecture and numerics; the defaults are HiDream-I1 (Full, Dev and Fast share them).
    diffusers' names: ``t5_dim, llama_dim = caption_channels``, ``pooled_projection_dim = text_emb_dim``."""

    patch_size: int = 2
    in_channels: int = 16                        # latent channels C
    out_channels: int = 16
    num_layers: int = 16                         # double-stream blocks L
    num_single_layers: int = 32                  # single-stream blocks S
    num_heads: int = 20
    head_dim: int = 128
    t5_dim: int = 4096
    llama_dim: int = 4096
    pooled_projection_dim: int = 2048            # CLIP-L (768) + CLIP-G (1280) projected
    num_routed_experts: int = 4                  # 0: plain SwiGLU image MLPs
    num_activated_experts: int = 2
    axes_dims_rope: tuple[int, ...] = (64, 32, 32)
    rope_theta: float = 10000.0
    max_resolution: tuple[int, int] = (128, 128)  # latent size a non-square input is padded to (in tokens x p)
    llama_layers: tuple[int, ...] = RELEASED_LLAMA_LAYERS   # block k reads Llama hidden state llama_layers[k]
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "full"
    scan_blocks: bool = False                    # nn.scan over the double and over the single blocks
    attention_impl: str | None = None            # None: cuDNN on a GPU in bf16/fp16, else XLA

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def max_tokens(self) -> int:
        return self.max_resolution[0] * self.max_resolution[1] // self.patch_size ** 2

    @classmethod
    def from_dict(cls, d: Any) -> "HiDreamConfig":
        d = dict(d)
        check_keys("model (hidream)", d, {f.name for f in dataclasses.fields(cls)})
        for f in ("axes_dims_rope", "max_resolution", "llama_layers"):
            if f in d:
                d[f] = tuple(int(a) for a in d[f])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_diffusers(cls, raw: dict[str, Any], **overrides: Any) -> "HiDreamConfig":
        """From a diffusers ``config.json`` of ``HiDreamImageTransformer2DModel``."""
        t5_dim, llama_dim = raw["caption_channels"]
        return cls.from_dict(dict(
            patch_size=raw["patch_size"], in_channels=raw["in_channels"],
            out_channels=raw.get("out_channels") or raw["in_channels"], num_layers=raw["num_layers"],
            num_single_layers=raw["num_single_layers"], num_heads=raw["num_attention_heads"],
            head_dim=raw["attention_head_dim"], t5_dim=t5_dim, llama_dim=llama_dim,
            pooled_projection_dim=raw["text_emb_dim"], num_routed_experts=raw["num_routed_experts"],
            num_activated_experts=raw["num_activated_experts"], axes_dims_rope=raw["axes_dims_rope"],
            max_resolution=raw["max_resolution"], llama_layers=raw["llama_layers"]) | overrides)

    def validate(self) -> None:
        for f in ("patch_size", "in_channels", "out_channels", "num_layers", "num_heads", "head_dim", "t5_dim",
                  "llama_dim", "pooled_projection_dim"):
            check_positive_int(f"model.{f}", getattr(self, f))
        for f in ("num_single_layers", "num_routed_experts"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) < 0:
                raise ConfigError(f"model.{f} must be a non-negative int, got {getattr(self, f)!r}")
        if self.num_routed_experts and not 1 <= self.num_activated_experts <= self.num_routed_experts:
            raise ConfigError(f"model.num_activated_experts={self.num_activated_experts} must be in [1, "
                              f"model.num_routed_experts={self.num_routed_experts}]")
        dims = tuple(self.axes_dims_rope)
        if any(a <= 0 or a % 2 for a in dims) or sum(dims) not in (self.head_dim, self.head_dim // 2):
            raise ConfigError(f"model.axes_dims_rope={dims} must be positive even dims summing to model.head_dim="
                              f"{self.head_dim} (or half of it)")
        if len(self.max_resolution) != 2 or any(r <= 0 or r % self.patch_size for r in self.max_resolution):
            raise ConfigError(f"model.max_resolution={self.max_resolution} must be two positive multiples of "
                              f"model.patch_size={self.patch_size}")
        blocks = self.num_layers + self.num_single_layers
        if len(self.llama_layers) != blocks or any(i < 0 for i in self.llama_layers):
            raise ConfigError(f"model.llama_layers must name one Llama layer (>= 0) per block, {blocks} entries "
                              f"(num_layers + num_single_layers), got {len(self.llama_layers)}")
        check_numerics(self, ATTENTION_IMPLS)

    def attention_backend(self) -> str:
        """``attention_impl``, or the platform's choice for None (``numerics.attention_path``)."""
        return attention_path(self)

    def block_kwargs(self) -> dict[str, Any]:
        return dict(num_heads=self.num_heads, head_dim=self.head_dim, num_experts=self.num_routed_experts,
                    top_k=self.num_activated_experts, attention_impl=self.attention_backend(),
                    dtype=DTYPES[self.dtype], param_dtype=DTYPES[self.param_dtype])

    def block_module(self, block: type[nn.Module]) -> type[nn.Module]:
        return nn.remat(block, policy=REMAT_POLICIES[self.remat_policy]) if self.remat else block


HIDREAM_I1 = HiDreamConfig()


# ------------------------------------------------------------------------------------------------
# Patches, ids and the padding mask


def patchify(latents: Array, cfg: HiDreamConfig) -> tuple[Array, Array | None, np.ndarray]:
    """``(B, H, W, C) -> (tokens (B, S, p^2 C), mask (B, S) | None, ids (S, 3))`` (module docstring): square
    latents give ``S = (H/p)(W/p)`` and no mask; others are padded to ``S = cfg.max_tokens``."""
    b, height, width, _ = latents.shape
    p = cfg.patch_size
    h, w = height // p, width // p
    tokens = patchify_clip(latents[:, None], 1, p)
    ids = grid_ids((1, h, w))
    if height == width:
        return tokens, None, ids
    if h * w > cfg.max_tokens:
        raise ConfigError(f"a {height}x{width} latent has {h * w} tokens, more than model.max_resolution="
                          f"{cfg.max_resolution} allows ({cfg.max_tokens})")
    pad = cfg.max_tokens - h * w
    tokens = jnp.pad(tokens, ((0, 0), (0, pad), (0, 0)))
    mask = jnp.broadcast_to((jnp.arange(cfg.max_tokens) < h * w).astype(tokens.dtype), (b, cfg.max_tokens))
    return tokens, mask, np.concatenate([ids, np.zeros((pad, 3), np.float32)])


def unpatchify_latents(tokens: Array, height: int, width: int, cfg: HiDreamConfig) -> Array:
    """The model's output tokens ``(B, S, p^2 C_out)`` -> ``(B, H, W, C_out)`` (padding dropped)."""
    p = cfg.patch_size
    h, w = height // p, width // p
    return unpatchify(tokens[:, :h * w], h, w, p, cfg.out_channels)


# ------------------------------------------------------------------------------------------------
# The model


class _DoubleScanBody(nn.Module):
    config: HiDreamConfig

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], c_i: Array, mask: Array | None, temb: Array, cos: Array,
                 sin: Array) -> tuple[tuple[Array, Array], None]:
        img, c0 = carry
        block = self.config.block_module(DoubleStreamBlock)(**self.config.block_kwargs(), name="block")
        img, txt = block(img, jnp.concatenate([c0, c_i], axis=1), mask, temb, cos, sin)
        return (img, txt[:, :c0.shape[1]]), None


class _SingleScanBody(nn.Module):
    config: HiDreamConfig

    @nn.compact
    def __call__(self, x: Array, c_j: Array, mask: Array | None, temb: Array, cos: Array,
                 sin: Array) -> tuple[Array, None]:
        block = self.config.block_module(SingleStreamBlock)(**self.config.block_kwargs(), name="block")
        return block(jnp.concatenate([x, c_j], axis=1), mask, temb, cos, sin)[:, :x.shape[1]], None


class HiDreamTransformer(nn.Module):
    """``(tokens (B, S, p^2 C), timestep (B,), t5 (B, T_5, d_5), llama (K, B, T_l, d_l), pooled (B, d_pool),
    img_ids (S, 3), mask (B, S) | None) -> (B, S, p^2 C_out)``; diffusers' forward on patched input.

    ``timestep`` in the model's units (diffusers' ``timesteps``, the scheduler's ``t`` in [0, 1000)).
    ``llama``: the stacked Llama hidden states ``hidden_states[1:]`` (``K`` layers, the last after the final norm);
    block ``k`` reads ``llama[llama_layers[k]]``. ``patchify`` / ``unpatchify_latents`` convert latents.
    ``interventions`` (or the keywords ``remove_pooled``, ``pooled_steering``) act on ``temb`` exactly as on SD3's
    ``y`` (``models/conditioning.py``); blocks cannot be skipped.
    """

    config: HiDreamConfig

    def _check_inputs(self, tokens: Array, t5: Array, llama: Array, pooled: Array | None, img_ids: Any,
                      mask: Array | None, interventions: Interventions) -> None:
        cfg = self.config
        width = cfg.patch_size ** 2 * cfg.in_channels
        if tokens.ndim != 3 or tokens.shape[-1] != width:
            raise ConfigError(f"tokens must be (B, S, {width}) for model.patch_size={cfg.patch_size}, "
                              f"model.in_channels={cfg.in_channels}, got shape {tokens.shape}")
        b, s = tokens.shape[:2]
        if t5.ndim != 3 or t5.shape[0] != b or t5.shape[-1] != cfg.t5_dim:
            raise ConfigError(f"t5 must be (B={b}, T, {cfg.t5_dim}) for model.t5_dim, got shape {t5.shape}")
        if llama.ndim != 4 or llama.shape[1] != b or llama.shape[-1] != cfg.llama_dim \
                or llama.shape[0] <= max(cfg.llama_layers):
            raise ConfigError(f"llama must be (K > {max(cfg.llama_layers)}, B={b}, T, {cfg.llama_dim}) for "
                              f"model.llama_layers / model.llama_dim, got shape {llama.shape}")
        if img_ids.shape != (s, len(cfg.axes_dims_rope)):
            raise ConfigError(f"img_ids must be (S={s}, {len(cfg.axes_dims_rope)}), got {img_ids.shape}")
        if mask is not None and mask.shape != (b, s):
            raise ConfigError(f"mask must be (B, S) = {(b, s)}, got {mask.shape}")
        check_conditioning(interventions, pooled, None, b, cfg.pooled_projection_dim)
        if interventions.skip_layers:
            raise ConfigError(f"skip_layers={list(interventions.skip_layers)}: the HiDream transformer cannot skip "
                              "blocks (the sd3 family can)")

    @nn.compact
    def __call__(self, tokens: Array, timestep: Array, t5: Array, llama: Array, pooled: Array | None,
                 img_ids: np.ndarray | Array, mask: Array | None = None,
                 interventions: Interventions | None = None, **switches: Any) -> Array:
        cfg = self.config
        interventions = Interventions.merge(interventions, **switches)
        self._check_inputs(tokens, t5, llama, pooled, img_ids, mask, interventions)
        dtype, pdtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        d, b = cfg.hidden, tokens.shape[0]
        dense = lambda f, name, bias=True: Dense(f, use_bias=bias, dtype=dtype, param_dtype=pdtype,  # noqa: E731
                                                 name=name)

        img = dense(d, "x_embedder")(tokens.astype(dtype))
        temb = conditioning_vector(
            jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (b,)), pooled, hidden=d, dtype=dtype,
            param_dtype=pdtype, pooled_dim=cfg.pooled_projection_dim, interventions=interventions,
            initializing=self.is_initializing())

        blocks = cfg.num_layers + cfg.num_single_layers
        kernels = self.param("llama_projection", nn.initializers.lecun_normal(batch_axis=(0,)),
                             (blocks, cfg.llama_dim, d), pdtype)
        chosen = jnp.take(llama, jnp.asarray(cfg.llama_layers), axis=0).astype(dtype)
        c = jnp.einsum("kbtc,kcd->kbtd", chosen, kernels.astype(dtype))          # (L + S, B, T_l, D)
        c0 = jnp.concatenate([dense(d, "t5_projection", False)(t5.astype(dtype)), c[-1]], axis=1)
        t0 = c0.shape[1]
        cos, sin = rope_tables(img_ids, cfg.axes_dims_rope, cfg.rope_theta)
        n = img.shape[1]
        # single blocks: the image mask over [img; c_0; c_j], text always visible
        mask_x = None if mask is None else jnp.concatenate(
            [mask, jnp.ones((b, t0 + c.shape[2]), mask.dtype)], axis=1)

        if cfg.scan_blocks:
            def scan(body: type[nn.Module], length: int, name: str) -> nn.Module:
                broadcast = nn.broadcast
                return nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                               in_axes=(0, broadcast, broadcast, broadcast, broadcast), length=length)(cfg, name=name)
            (img, c0), _ = scan(_DoubleScanBody, cfg.num_layers, "double_stream_blocks")(
                (img, c0), c[:cfg.num_layers], mask, temb, cos, sin)
            x = jnp.concatenate([img, c0], axis=1)
            if cfg.num_single_layers:
                x, _ = scan(_SingleScanBody, cfg.num_single_layers, "single_stream_blocks")(
                    x, c[cfg.num_layers:], mask_x, temb, cos, sin)
        else:
            double = cfg.block_module(DoubleStreamBlock)
            for i in range(cfg.num_layers):
                img, txt = double(**cfg.block_kwargs(), name=f"double_stream_blocks_{i}")(
                    img, jnp.concatenate([c0, c[i]], axis=1), mask, temb, cos, sin)
                c0 = txt[:, :t0]
            x = jnp.concatenate([img, c0], axis=1)
            single = cfg.block_module(SingleStreamBlock)
            for j in range(cfg.num_single_layers):
                x = single(**cfg.block_kwargs(), name=f"single_stream_blocks_{j}")(
                    jnp.concatenate([x, c[cfg.num_layers + j]], axis=1), mask_x, temb, cos, sin)[:, :n + t0]

        return FinalLayer(cfg.patch_size ** 2 * cfg.out_channels, dtype, pdtype, name="final_layer")(x[:, :n], temb)


class FinalLayer(nn.Module):
    """``linear(LN(x) (1 + scale) + shift)``, ``(shift, scale) = adaLN_modulation(silu(temb))`` (shift first)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array) -> Array:
        dense = lambda f, name: Dense(f, dtype=self.dtype, param_dtype=self.param_dtype, name=name)  # noqa: E731
        shift, scale = jnp.split(dense(2 * x.shape[-1], "adaLN_modulation")(nn.silu(temb)), 2, axis=-1)
        return dense(self.features, "linear")(modulate(layer_norm(x), shift, scale))


def apply_latents(model: HiDreamTransformer, variables: Any, latents: Array, timestep: Array, t5: Array,
                  llama: Array, pooled: Array | None, **kwargs: Any) -> Array:
    """The model on latents ``(B, H, W, C) -> (B, H, W, C_out)``: ``patchify``, forward, ``unpatchify_latents``."""
    cfg = model.config
    tokens, mask, ids = patchify(latents, cfg)
    out = model.apply(variables, tokens, timestep, t5, llama, pooled, ids, mask, **kwargs)
    return unpatchify_latents(out, latents.shape[1], latents.shape[2], cfg)


def abstract_variables(cfg: HiDreamConfig, size: int = 4, text_tokens: int = 8) -> Any:
    """Shapes and dtypes of ``HiDreamTransformer(cfg).init`` via ``jax.eval_shape`` (nothing allocated) on a
    ``size x size`` latent."""
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    s = (size // cfg.patch_size) ** 2
    ids = grid_ids((1, size // cfg.patch_size, size // cfg.patch_size))
    model = HiDreamTransformer(cfg)

    def init(key, tokens, t, t5, llama, pooled):
        return model.init(key, tokens, t, t5, llama, pooled, ids)

    return jax.eval_shape(init, jax.random.PRNGKey(0), f32(1, s, cfg.patch_size ** 2 * cfg.in_channels), f32(1),
                          f32(1, text_tokens, cfg.t5_dim), f32(max(cfg.llama_layers) + 1, 1, text_tokens,
                                                                cfg.llama_dim), f32(1, cfg.pooled_projection_dim))
