"""``model.name="flux"``: FLUX.1 (``mmdit_jax.models.flux``, diffusers' ``FluxTransformer2DModel``) as a model family.

    net(x, t) = unpack(Flux(pack(x), t, cond["context"], cond["pooled"], img_ids(H, W), txt_ids(T), guidance))

``x: (B, H, W, C)`` NHWC latents (H, W even) are packed 2x2 into ``(B, H/2 * W/2, 4C)`` tokens and the output
unpacked, so trainers and samplers see an ``(H, W, C) -> (H, W, C)`` network like every family's. The network
embeds ``timestep_scale * t`` (default 1000: FLUX's ``1000 t`` for flow time ``t`` in [0, 1]) and
``1000 * guidance`` (guidance-distilled models: the guidance scale, e.g. 3.5).

Conditioning: ``context (B, T, 4096)`` (T5-XXL states), ``pooled (B, 768)`` (CLIP-L pooler output); optional
``guidance (B,)`` for guidance-distilled models (``guidance_embeds``; absent: the ``guidance`` option of ``net``,
default 3.5 as in diffusers' ``FluxPipeline``); ``pooled_steering = (pooled_plus, pooled_minus, w)`` steers y.
Optional ``reference (B, h, w, C)`` (FLUX.1 Kontext): clean latents of a reference image, packed and appended after
the target's tokens with ids ``(1, row, col)`` (the target keeps index 0); the output is sliced back to the target
tokens, so ``net`` stays ``(H, W, C) -> (H, W, C)``. The reference is never noised and shares ``t`` and ``y``.
Optional ``concat (B, H, W, C)`` (channel concatenation, InstructPix2Pix-style editing; FLUX.1 Fill's layout): the
packed ``concat`` follows the packed ``x`` in every token's features, so ``model.in_channels = 2 * 4C`` and
``out_channels = 4C``; the first ``4C`` input rows of ``x_embedder`` are the text-to-image model's.
Video (docs/flux.md "Video"): ``x: (B, T, H, W, C)`` clips are packed by ``pack_clip`` into ``T/p_t * H/2 * W/2``
tokens of ``p_t = model.temporal_patch_size`` frames each, with ids ``(t, row, col)`` on the three RoPE axes (an
image's are ``(0, row, col)``: a one-frame clip with ``p_t = 1`` is the image model, same weights). Optional
``context_frames (B, T_c, H, W, C)``: clean previous frames (frame-by-frame generation), packed the same way and
appended after the clip's tokens at times ``0 .. T_c/p_t - 1``, the clip's times starting at ``T_c/p_t``; the output
is the clip's. Clips take no ``reference`` (its index 1 is a time on the first axis). Which groups join the stream
and at which frame is ``models/image_stream.py`` (shared with SD3); here each becomes packed tokens and RoPE ids.
Inference options of ``net``: ``remove_pooled`` (y = e_t [+ e_g]), ``guidance``; with ``pooled_steering`` they reach
the model as one ``Interventions`` (``models/conditioning.py``).
Checkpoints: diffusers folders / files and the original BFL layout (``mmdit_jax.interop.flux``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.families.base import Conditioning, Family, Net
from mmdit_jax.models.conditioning import Interventions
from mmdit_jax.models.flux import (
    FluxConfig, FluxTransformer, group_ids, latent_clip_ids, latent_image_ids, pack_clip, pack_latents, text_ids,
    unpack_clip, unpack_latents,
)
from mmdit_jax.models.image_stream import check_clean_groups, image_stream
from mmdit_jax.models.flops import flux_forward_flops
from mmdit_jax.models.numerics import cast_kernels

Array = jax.Array


def forward_mode_config(cfg: FluxConfig) -> FluxConfig:
    """``cfg`` usable under ``jax.jvp``: cuDNN's fused attention is a ``custom_vjp`` function, which forward-mode
    autodiff cannot go through, so ``attention_impl=None`` becomes 'xla' and an explicit 'cudnn' is rejected
    ('chunked' is kept: its FLUX path is plain autodiff)."""
    if cfg.attention_impl == "cudnn":
        raise ConfigError("this loss differentiates the model forward (jax.jvp), which cuDNN attention does not "
                          "support: set model.attention_impl to None, 'xla' or 'chunked' (got 'cudnn')")
    return dataclasses.replace(cfg, attention_impl="chunked" if cfg.attention_impl == "chunked" else "xla")


def image_ids(height: int, width: int, reference: tuple[int, int] | None = None) -> np.ndarray:
    """``(N [+ N_ref], 3)`` float32 ids of the image tokens ``net`` hands the model for ``(H, W)`` latents: the
    target's ``(0, row, col)``, then, with a Kontext ``reference = (h, w)``, the reference's ``(1, row, col)`` on
    its own grid from 0 (diffusers' ``FluxKontextPipeline.prepare_latents``, BFL's ``prepare_kontext``)."""
    ids = latent_image_ids(height, width)
    if reference is None:
        return ids
    return np.concatenate([ids, latent_image_ids(*reference, index=1)])


class FluxFamily(Family):
    name = "flux"
    Config = FluxConfig
    conditioning = ("context", "pooled")

    def __init__(self, config: FluxConfig, schedule: Any, timestep_scale: float = 1000.0,
                 forward_mode: bool = False):
        if forward_mode:
            config = forward_mode_config(config)
        super().__init__(config, schedule, timestep_scale, forward_mode)
        self.module = FluxTransformer(config)

    @classmethod
    def config_from_dict(cls, fields: Mapping[str, Any]) -> FluxConfig:
        return FluxConfig.from_dict(fields)

    def check_data(self, data_shape: tuple[int, ...]) -> None:
        """Images ``(H, W, C)`` or clips ``(T, H, W, C)``: H, W even, T divisible by ``temporal_patch_size``, and
        the token widths ``4 p_t C`` (in_channels ``8 p_t C`` with a concatenated image)."""
        cfg, pt = self.config, self.config.temporal_patch_size
        if len(data_shape) not in (3, 4) or 4 * pt * data_shape[-1] != cfg.out_channels or \
                cfg.in_channels not in (cfg.out_channels, 2 * cfg.out_channels):
            raise ConfigError(f"model.in_channels/out_channels ({cfg.in_channels}/{cfg.out_channels}) must both be 4x "
                              f"the channels of the data's (H, W, C) or (T, H, W, C) = {tuple(data_shape)} examples "
                              f"times model.temporal_patch_size={pt} (a token packs {pt} frame(s) of 2x2 latent pixels; "
                              "in_channels twice that for a model that reads an image concatenated to its input)")
        if len(data_shape) == 3 and pt != 1:
            raise ConfigError(f"model.temporal_patch_size={pt} is for clips (T, H, W, C); the data's examples are "
                              f"images {tuple(data_shape)}: use 1")
        if len(data_shape) == 4 and data_shape[0] % pt:
            raise ConfigError(f"clips of {data_shape[0]} frames are not divisible by model.temporal_patch_size={pt}")
        if data_shape[-3] % 2 or data_shape[-2] % 2:
            raise ConfigError(f"the FLUX family packs 2x2 patches: the data's height and width must be even, got "
                              f"{tuple(data_shape[-3:-1])}")

    def check_conditioning(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        cfg = self.config
        for name, field, width in (("context", "joint_attention_dim", cfg.joint_attention_dim),
                                   ("pooled", "pooled_projection_dim", cfg.pooled_projection_dim)):
            if name in shapes and shapes[name][-1] != width:
                raise ConfigError(f"the text encoders give {name} width {shapes[name][-1]}, but model.{field}={width}")
        if "context_frames" in shapes and shapes["context_frames"][-4] % cfg.temporal_patch_size:
            raise ConfigError(f"context_frames of {shapes['context_frames'][-4]} frames are not divisible by "
                              f"model.temporal_patch_size={cfg.temporal_patch_size}")

    def _guidance(self, cond: Conditioning, batch: int, guidance: float) -> Array | None:
        if not self.config.guidance_embeds:
            return None
        g = cond.get("guidance")
        return jnp.full((batch,), guidance, jnp.float32) if g is None else g

    def _pack(self, x: Array) -> Array:
        """An image ``(B, H, W, C)`` or a clip ``(B, T, H, W, C)`` as tokens (``pack_latents`` / ``pack_clip``)."""
        pt = self.config.temporal_patch_size
        if x.ndim == 4 and pt != 1:
            raise ConfigError(f"model.temporal_patch_size={pt} packs clips (B, T, H, W, C); images need 1, got an "
                              f"image of shape {tuple(x.shape)}")
        if x.ndim not in (4, 5):
            raise ConfigError(f"x must be latents (B, H, W, C) or a clip (B, T, H, W, C), got shape {tuple(x.shape)}")
        return pack_latents(x) if x.ndim == 4 else pack_clip(x, pt)

    def _tokens(self, x: Array, cond: Conditioning) -> Array:
        """``pack(x)``, followed in each token by ``pack(cond["concat"])`` for a channel-concatenating model."""
        tokens = self._pack(x)
        concat = cond.get("concat")
        if self.config.in_channels == tokens.shape[-1] and concat is None:
            return tokens
        if concat is None or concat.shape != x.shape or self.config.in_channels != 2 * tokens.shape[-1]:
            raise ConfigError(f"model.in_channels={self.config.in_channels} for {x.shape[-1]}-channel latents needs "
                              f"cond['concat'] shaped like x {tuple(x.shape)} (and in_channels = 8C per frame of a "
                              f"token), got {None if concat is None else tuple(concat.shape)}")
        return jnp.concatenate([tokens, self._pack(concat.astype(x.dtype))], axis=-1)

    def init(self, key: Array, x: Array, cond: Conditioning) -> dict[str, Any]:
        self._require(cond, *self.conditioning)
        self.check_data(tuple(x.shape[1:]))
        b, height, width = x.shape[0], x.shape[-3], x.shape[-2]
        context = cond["context"]
        if self.config.in_channels == 2 * self.config.out_channels and "concat" not in cond:   # shapes suffice
            cond = {**cond, "concat": jnp.zeros_like(x)}
        # the parameters do not depend on the sequence: a clip initialises on its own tokens, context frames or not
        ids = latent_image_ids(height, width) if x.ndim == 4 else \
            latent_clip_ids(x.shape[1], height, width, self.config.temporal_patch_size)
        variables = self.module.init(key, self._tokens(x, cond), jnp.zeros((b,)), context, cond["pooled"],
                                     ids, text_ids(context.shape[1]), self._guidance(cond, b, 1.0))
        return {"params": variables["params"]}

    def prepare(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        return {**variables, "params": cast_kernels(variables["params"], self.config.dtype)}

    def net(self, variables: Mapping[str, Any], cond: Conditioning, remove_pooled: bool = False,
            guidance: float = 3.5) -> Net:
        """``x``'s tokens then the clean groups' (``models/image_stream.py``: a Kontext reference at index 1, or
        context frames before a clip in time), with their ids; the output is read from ``x``'s tokens."""
        self._require(cond, "context")
        cfg, context = self.config, cond["context"]
        interventions = Interventions.of(remove_pooled=remove_pooled, pooled_steering=cond.get("pooled_steering"))
        reference, context_frames = cond.get("reference"), cond.get("context_frames")
        if reference is not None and cfg.in_channels != cfg.out_channels:
            raise ConfigError("cond['reference'] (in-context editing) needs a model whose input is the image alone; "
                              f"this one reads {cfg.in_channels} features for {cfg.out_channels}")
        if reference is not None and (reference.ndim != 4 or 4 * reference.shape[-1] != cfg.in_channels
                                      or reference.shape[1] % 2 or reference.shape[2] % 2):
            raise ConfigError(f"cond['reference'] must be (B, h, w, {cfg.latent_channels}) latents with h, w "
                              f"even, got shape {tuple(reference.shape)}")
        check_clean_groups(reference, context_frames)
        if context_frames is not None and cfg.in_channels != cfg.out_channels:
            raise ConfigError("cond['context_frames'] needs a model whose input is the clip alone; this one reads "
                              f"{cfg.in_channels} features for {cfg.out_channels}")

        def net(x: Array, t: Array) -> Array:
            pt = cfg.temporal_patch_size
            groups = image_stream(x, reference, context_frames, pt)
            target = self._tokens(x, cond)         # x's tokens, with a channel-concatenated image's features
            tokens = jnp.concatenate([target, *(self._pack(g.latents.astype(target.dtype)) for g in groups[1:])],
                                     axis=1) if len(groups) > 1 else target
            ids = np.concatenate([group_ids(g, pt) for g in groups])
            out = self.module.apply(variables, tokens, t, context, cond.get("pooled"), ids,
                                    text_ids(context.shape[1]), self._guidance(cond, x.shape[0], guidance),
                                    interventions, time_scale=self.timestep_scale)[:, :target.shape[1]]
            height, width = x.shape[-3:-1]
            if x.ndim == 4:
                return unpack_latents(out, height, width)
            return unpack_clip(out, x.shape[1], height, width, pt)

        return net

    def forward_flops(self, batch: int, data_shape: tuple[int, ...], cond_shapes: Mapping[str, tuple]) -> int:
        """Images: ``flux_forward_flops``. Clips ``(T, H, W, C)``: the same count over the clip's
        ``T/p_t * H/2 * W/2`` tokens plus those of ``context_frames`` when the run provides them (the model embeds
        and projects every image-stream token)."""
        if len(data_shape) == 3:
            height, width, _ = data_shape
            return flux_forward_flops(self.config, batch, height, width, cond_shapes["context"][-2])
        pt = self.config.temporal_patch_size
        frames, height, width, _ = data_shape
        tokens = (frames // pt) * (height // 2) * (width // 2)
        if "context_frames" in cond_shapes:
            cf, ch, cw, _ = cond_shapes["context_frames"][-4:]
            tokens += (cf // pt) * (ch // 2) * (cw // 2)
        # flux_forward_flops counts the (h/2)(w/2) tokens of an (h, w) latent: a (2, 2 n) one has exactly n
        return flux_forward_flops(self.config, batch, 2, 2 * tokens, cond_shapes["context"][-2])

    @classmethod
    def load_pretrained(cls, source: Any, **overrides: Any) -> tuple[FluxConfig, dict[str, Any]]:
        from mmdit_jax.interop.flux import load_flux

        return load_flux(source, **overrides)

    @classmethod
    def lora_layout(cls) -> Any:
        """diffusers' ``FluxTransformer2DModel`` names (``interop.flux``); scanned: the double and the single
        blocks, each one stack."""
        from mmdit_jax.interop import flux
        from mmdit_jax.interop.lora import LoraLayout
        from mmdit_jax.models import flux_params

        groups = (("transformer_blocks", "num_layers"), ("single_transformer_blocks", "num_single_layers"))
        return LoraLayout(flux.diffusers_keys, flux.flax_path, flux_params.stack_blocks, flux_params.unstack_blocks,
                          lambda cfg: [[f"{g}_{i}" for i in range(getattr(cfg, n))] for g, n in groups],
                          lambda cfg: [g for g, _ in groups])

    def export(self, variables: Mapping[str, Any], layout: str = "diffusers") -> dict[str, Any]:
        from mmdit_jax.interop.flux import diffusers_to_original, to_diffusers

        if layout not in ("diffusers", "original"):
            raise ConfigError(f"layout={layout!r} is not valid; choose one of ['diffusers', 'original']")
        sd = to_diffusers(self.config, variables)
        return sd if layout == "diffusers" else diffusers_to_original(sd)
