"""``model.name="sd3"``: the SD3 / SD3.5 MMDiT (``mmdit_jax.models.mmdit``) as a model family.

    net(x, t) = MMDiT(x, timestep_scale * t, cond["context"], cond["pooled"])      (SD3: timestep_scale = 1000)

Inference options of ``net``: ``remove_pooled`` (y = e_t, the CLIP-removal ablation), ``skip_layers``; and the
conditioning entry ``pooled_steering = (pooled_plus, pooled_minus, w)`` steers y; all three reach the model as one
``Interventions`` (``models/conditioning.py``).
Editing entries: ``reference (B, h, w, C)`` (in-context: its tokens follow the target's, as frame 1 of the
position table, ``models/image_stream.py``; the output is the target's), ``concat (B, H, W, C)`` (channel concatenation:
``x`` and ``concat`` enter the patch embedding together, so ``model.in_channels = 2 C``, ``out_channels = C``).
Video: ``x (B, T, H, W, C)`` (``model.temporal_patch_size`` frames per patch) and ``context_frames (B, T_c, H, W,
C)``, clean previous frames for frame-by-frame generation (see ``MMDiT``).
Checkpoints: diffusers ``SD3Transformer2DModel`` folders and files and the original Stability layout
(``mmdit_jax.interop.sd3``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError
from mmdit_jax.families.base import Conditioning, Family, Net
from mmdit_jax.models.conditioning import Interventions
from mmdit_jax.models.flops import mmdit_forward_flops
from mmdit_jax.models.layers import attention_backend
from mmdit_jax.models.mmdit import MMDiT, MMDiTConfig
from mmdit_jax.models.numerics import cast_kernels

Array = jax.Array


def forward_mode_config(cfg: MMDiTConfig) -> MMDiTConfig:
    """``cfg`` usable under ``jax.jvp`` (a loss that differentiates the forward pass, e.g. sliced score matching).

    Hand-written gradients and cuDNN's fused attention are ``custom_vjp`` functions, which forward-mode
    autodiff cannot go through: ``custom_gradients=None`` becomes False, ``attention_impl=None`` becomes 'xla'
    where it would pick cuDNN (a GPU in bf16 / fp16); an explicit choice of either is rejected.
    """
    if cfg.custom_gradients or cfg.attention_impl in ("einsum_vjp", "cudnn"):
        raise ConfigError("this loss differentiates the model forward (jax.jvp), which hand-written gradients and "
                          "cuDNN attention do not support: set model.custom_gradients to None or False (got "
                          f"{cfg.custom_gradients!r}) and model.attention_impl to None, 'einsum', 'xla' or 'chunked' (got "
                          f"{cfg.attention_impl!r})")
    impl = cfg.attention_impl
    if impl is None and attention_backend(None, cfg.dtype, cfg.head_dim) == "cudnn":
        impl = "xla"
    return dataclasses.replace(cfg, custom_gradients=False, attention_impl=impl)


def _with_concat(cfg: MMDiTConfig, x: Array, cond: Conditioning) -> Array:
    """``x`` with ``cond["concat"]`` appended to its channels when the model reads ``2 C`` of them."""
    concat = cond.get("concat")
    if cfg.in_channels == x.shape[-1] and concat is None:
        return x
    if concat is None or concat.shape != x.shape or cfg.in_channels != 2 * x.shape[-1]:
        raise ConfigError(f"model.in_channels={cfg.in_channels} for {x.shape[-1]}-channel images needs "
                          f"cond['concat'] shaped like x {tuple(x.shape)} (and in_channels = 2C), got "
                          f"{None if concat is None else tuple(concat.shape)}")
    return jnp.concatenate([x, concat.astype(x.dtype)], axis=-1)


class SD3Family(Family):
    name = "sd3"
    Config = MMDiTConfig

    def __init__(self, config: MMDiTConfig, schedule: Any, timestep_scale: float = 1000.0,
                 forward_mode: bool = False):
        if forward_mode:
            config = forward_mode_config(config)
        super().__init__(config, schedule, timestep_scale, forward_mode)
        self.module = MMDiT(config)

    @classmethod
    def config_from_dict(cls, fields: Mapping[str, Any]) -> MMDiTConfig:
        return MMDiTConfig.from_dict(fields)

    @property
    def conditioning(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("context", "pooled") if self.config.use_pooled else ("context",)

    def check_data(self, data_shape: tuple[int, ...]) -> None:
        cfg = self.config
        if len(data_shape) not in (3, 4) or cfg.out_channels != data_shape[-1] or \
                cfg.in_channels not in (data_shape[-1], 2 * data_shape[-1]):
            raise ConfigError(f"model.in_channels/out_channels ({cfg.in_channels}/{cfg.out_channels}) must both equal "
                              f"the channels of the data's (H, W, C) or (T, H, W, C) = {tuple(data_shape)} examples "
                              "(in_channels 2C for a model that reads an image concatenated to its input)")
        if len(data_shape) == 4 and data_shape[0] % cfg.temporal_patch_size:
            raise ConfigError(f"clips of {data_shape[0]} frames are not divisible by model.temporal_patch_size="
                              f"{cfg.temporal_patch_size}")
        if len(data_shape) == 3 and cfg.temporal_patch_size != 1:
            raise ConfigError(f"model.temporal_patch_size={cfg.temporal_patch_size} is for clips (T, H, W, C); the "
                              f"data's examples are images {tuple(data_shape)}: use 1")

    def check_conditioning(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        cfg = self.config
        for name, field, width in (("context", "joint_attention_dim", cfg.joint_attention_dim),
                                   ("pooled", "pooled_projection_dim", cfg.pooled_projection_dim)):
            if name in self.conditioning and shapes[name][-1] != width:
                raise ConfigError(f"the text encoders give {name} width {shapes[name][-1]}, but model.{field}={width}")

    def init(self, key: Array, x: Array, cond: Conditioning) -> dict[str, Any]:
        self._require(cond, *self.conditioning)
        pooled = cond["pooled"] if self.config.use_pooled else None
        if self.config.in_channels == 2 * x.shape[-1] and "concat" not in cond:   # shapes are all init needs
            cond = {**cond, "concat": jnp.zeros_like(x)}
        x = _with_concat(self.config, x, cond)
        variables = self.module.init(key, x, jnp.zeros((x.shape[0],)), cond["context"], pooled)
        # init makes every collection mutable, so the attention maps (models/introspection.py) are sown too
        return {"params": variables["params"], "buffers": variables["buffers"]}

    def prepare(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        return {**variables, "params": cast_kernels(variables["params"], self.config.dtype)}

    def net(self, variables: Mapping[str, Any], cond: Conditioning, remove_pooled: bool = False,
            skip_layers: tuple[int, ...] = ()) -> Net:
        pooled = cond.get("pooled") if self.config.use_pooled else None
        interventions = Interventions.of(remove_pooled=remove_pooled, skip_layers=skip_layers,
                                         pooled_steering=cond.get("pooled_steering"))
        reference = cond.get("reference")
        if reference is not None and self.config.in_channels != self.config.out_channels:
            raise ConfigError("cond['reference'] (in-context editing) needs a model whose input is the image alone; "
                              f"this one reads {self.config.in_channels} channels for {self.config.out_channels}")

        def net(x: Array, t: Array) -> Array:
            return self.module.apply(variables, _with_concat(self.config, x, cond), self.timestep_scale * t,
                                     cond["context"], pooled, interventions, reference=reference,
                                     context_frames=cond.get("context_frames"))

        return net

    def forward_flops(self, batch: int, data_shape: tuple[int, ...], cond_shapes: Mapping[str, tuple]) -> int:
        height, width, _ = data_shape[-3:]
        frames = data_shape[0] if len(data_shape) == 4 else 0
        return mmdit_forward_flops(self.config, batch, height, width, cond_shapes["context"][-2], frames)

    @classmethod
    def load_pretrained(cls, source: Any, **overrides: Any) -> tuple[MMDiTConfig, dict[str, Any]]:
        from mmdit_jax.interop.sd3 import load_sd3

        return load_sd3(source, **overrides)

    @classmethod
    def lora_layout(cls) -> Any:
        """diffusers' ``SD3Transformer2DModel`` names (``interop.sd3``); scanned runs ``scan_{a}_{b}``."""
        from mmdit_jax.interop.lora import LoraLayout
        from mmdit_jax.interop.sd3 import diffusers_keys, flax_path
        from mmdit_jax.models import mmdit_params

        def path(key: str) -> tuple[str, ...] | None:
            collection, p = flax_path(key)
            return p if collection == "params" else None

        return LoraLayout(
            diffusers_keys, path, mmdit_params.stack_blocks, mmdit_params.unstack_blocks,
            lambda cfg: [[f"transformer_blocks_{i}" for i in range(a, b)] for a, b, _ in cfg.block_groups()],
            lambda cfg: [f"scan_{a}_{b}" for a, b, _ in cfg.block_groups()])

    def export(self, variables: Mapping[str, Any], layout: str = "diffusers") -> dict[str, Any]:
        from mmdit_jax.interop.sd3 import diffusers_to_original, to_diffusers

        if layout not in ("diffusers", "original"):
            raise ConfigError(f"layout={layout!r} is not valid; choose one of ['diffusers', 'original']")
        sd = to_diffusers(self.config, variables)
        return sd if layout == "diffusers" else diffusers_to_original(sd)
