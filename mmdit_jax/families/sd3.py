"""``model.name="sd3"``: the SD3 / SD3.5 MMDiT (``mmdit_jax.models.mmdit``) as a model family.

    net(x, t) = MMDiT(x, timestep_scale * t, cond["context"], cond["pooled"])      (SD3: timestep_scale = 1000)

Inference options of ``net``: ``remove_pooled`` (y = e_t, the CLIP-removal ablation), ``skip_layers``; and the
conditioning entry ``pooled_steering = (pooled_plus, pooled_minus, w)`` steers y (see ``MMDiT``).
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
from mmdit_jax.models.flops import mmdit_forward_flops
from mmdit_jax.models.layers import attention_backend
from mmdit_jax.models.mmdit import MMDiT, MMDiTConfig
from mmdit_jax.models.mmdit_params import cast_kernels

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
                          f"{cfg.custom_gradients!r}) and model.attention_impl to None, 'einsum' or 'xla' (got "
                          f"{cfg.attention_impl!r})")
    impl = cfg.attention_impl
    if impl is None and attention_backend(None, cfg.dtype, cfg.head_dim) == "cudnn":
        impl = "xla"
    return dataclasses.replace(cfg, custom_gradients=False, attention_impl=impl)


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
        if len(data_shape) != 3 or data_shape[-1] != cfg.in_channels or cfg.out_channels != cfg.in_channels:
            raise ConfigError(f"model.in_channels/out_channels ({cfg.in_channels}/{cfg.out_channels}) must both equal "
                              f"the channels of the data's (H, W, C) = {tuple(data_shape)} examples")

    def check_conditioning(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        cfg = self.config
        for name, field, width in (("context", "joint_attention_dim", cfg.joint_attention_dim),
                                   ("pooled", "pooled_projection_dim", cfg.pooled_projection_dim)):
            if name in self.conditioning and shapes[name][-1] != width:
                raise ConfigError(f"the text encoders give {name} width {shapes[name][-1]}, but model.{field}={width}")

    def init(self, key: Array, x: Array, cond: Conditioning) -> dict[str, Any]:
        self._require(cond, *self.conditioning)
        pooled = cond["pooled"] if self.config.use_pooled else None
        variables = self.module.init(key, x, jnp.zeros((x.shape[0],)), cond["context"], pooled)
        # init makes every collection mutable, so the attention maps (models/introspection.py) are sown too
        return {"params": variables["params"], "buffers": variables["buffers"]}

    def prepare(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        return {**variables, "params": cast_kernels(variables["params"], self.config.dtype)}

    def net(self, variables: Mapping[str, Any], cond: Conditioning, remove_pooled: bool = False,
            skip_layers: tuple[int, ...] = ()) -> Net:
        pooled = cond.get("pooled") if self.config.use_pooled else None
        steering = cond.get("pooled_steering")

        def net(x: Array, t: Array) -> Array:
            return self.module.apply(variables, x, self.timestep_scale * t, cond["context"], pooled,
                                     skip_layers=skip_layers, remove_pooled=remove_pooled, pooled_steering=steering)

        return net

    def forward_flops(self, batch: int, data_shape: tuple[int, ...], cond_shapes: Mapping[str, tuple]) -> int:
        height, width, _ = data_shape
        return mmdit_forward_flops(self.config, batch, height, width, cond_shapes["context"][-2])

    @classmethod
    def load_pretrained(cls, source: Any, **overrides: Any) -> tuple[MMDiTConfig, dict[str, Any]]:
        from mmdit_jax.interop.sd3 import load_sd3

        return load_sd3(source, **overrides)

    def export(self, variables: Mapping[str, Any], layout: str = "diffusers") -> dict[str, Any]:
        from mmdit_jax.interop.sd3 import diffusers_to_original, to_diffusers

        if layout not in ("diffusers", "original"):
            raise ConfigError(f"layout={layout!r} is not valid; choose one of ['diffusers', 'original']")
        sd = to_diffusers(self.config, variables)
        return sd if layout == "diffusers" else diffusers_to_original(sd)
