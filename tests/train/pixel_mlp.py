"""A second model family, registered from outside the package: an MLP over flattened pixels, conditioned on the
pooled text vector and sin-cos features of the time. Nothing in mmdit_jax knows it; one line registers it."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmdit_jax.families import Family, register_family
from mmdit_jax.models.embeddings import timestep_features


@dataclasses.dataclass(frozen=True)
class PixelMLPConfig:
    hidden: int = 64
    depth: int = 2


class PixelMLP(nn.Module):
    """``(x: (B, H, W, C), t_model: (B,), pooled: (B, d)) -> (B, H, W, C)``."""

    config: PixelMLPConfig

    @nn.compact
    def __call__(self, x, t_model, pooled):
        b = x.shape[0]
        h = jnp.concatenate([x.reshape(b, -1), timestep_features(t_model, 32), pooled], axis=-1)
        for _ in range(self.config.depth):
            h = nn.gelu(nn.Dense(self.config.hidden)(h))
        return nn.Dense(x[0].size)(h).reshape(x.shape)


class PixelMLPFamily(Family):
    name = "pixel_mlp"
    Config = PixelMLPConfig
    conditioning = ("pooled",)

    def __init__(self, config, schedule, timestep_scale=1.0, forward_mode=False):
        super().__init__(config, schedule, timestep_scale, forward_mode)
        self.module = PixelMLP(config)

    def init(self, key, x, cond):
        return self.module.init(key, x, jnp.zeros((x.shape[0],)), cond["pooled"])

    def net(self, variables: Mapping[str, Any], cond, **options):
        self._check_options(options, ())
        return lambda x, t: self.module.apply(variables, x, self.timestep_scale * t, cond["pooled"])

    def forward_flops(self, batch, data_shape, cond_shapes):
        n, h = int(jnp.prod(jnp.asarray(data_shape))), self.config.hidden
        return 2 * batch * ((n + 32 + cond_shapes["pooled"][-1]) * h + (self.config.depth - 1) * h * h + h * n)


register_family("pixel_mlp", PixelMLPFamily)
