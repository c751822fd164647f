"""``model.name="mlp"``: a noise-conditional MLP for low-dimensional data (the NCSN 2D toy: 3 softplus layers).

    net(x, t) = MLP([c_in x / alpha, log sigma_ve]),   c_in = 1 / sqrt(sigma_ve^2 + sigma_data^2)

with ``sigma_ve = sigma(t) / alpha(t)`` (NCSN coordinates ``y = x / alpha``), so it works on any schedule and
every noise level sees O(1) inputs (EDM's input scaling). Unconditional; examples are vectors ``(d,)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_positive, check_positive_int
from mmdit_jax.diffusion.schedules import Schedule
from mmdit_jax.families.base import Conditioning, Family, Net
from mmdit_jax.models.mlp import NoiseConditionalMLP

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    hidden: int = 128
    depth: int = 3
    sigma_data: float = 1.0      # data scale for the input scaling c_in

    def validate(self) -> None:
        check_positive_int("model.hidden", self.hidden)
        check_positive_int("model.depth", self.depth)
        check_positive("model.sigma_data", self.sigma_data)


def mlp_net(module: NoiseConditionalMLP, params: Any, schedule: Schedule, sigma_data: float) -> Net:
    """``net(x: (B, d), t: (B,)) -> (B, d)``: the MLP conditioned on ``log sigma_ve(t)`` (module docstring)."""

    def net(x: Array, t: Array) -> Array:
        alpha, sigma = schedule.marginal(t)
        sigma_ve = sigma / alpha
        c_in = 1.0 / jnp.sqrt(sigma_ve**2 + sigma_data**2)
        return module.apply(params, (x / alpha[:, None]) * c_in[:, None], jnp.log(sigma_ve))

    return net


class MLPFamily(Family):
    name = "mlp"
    Config = MLPConfig

    def __init__(self, config: MLPConfig, schedule: Schedule, timestep_scale: float = 1.0,
                 forward_mode: bool = False):
        super().__init__(config, schedule, timestep_scale, forward_mode)
        self.module = NoiseConditionalMLP(hidden=config.hidden, depth=config.depth)

    def check_data(self, data_shape: tuple[int, ...]) -> None:
        if len(data_shape) != 1:
            raise ConfigError(f"model.name='mlp' takes vector data (d,), got examples of shape {tuple(data_shape)}")

    def init(self, key: Array, x: Array, cond: Conditioning) -> dict[str, Any]:
        return self.module.init(key, x, jnp.zeros((x.shape[0],)))

    def net(self, variables: Mapping[str, Any], cond: Conditioning, **options: Any) -> Net:
        self._check_options(options, ())
        return mlp_net(self.module, variables, self.schedule, self.config.sigma_data)

    def forward_flops(self, batch: int, data_shape: tuple[int, ...], cond_shapes: Mapping[str, tuple]) -> int:
        d, h = data_shape[0], self.config.hidden
        return 2 * batch * ((d + 1) * h + (self.config.depth - 1) * h * h + h * d)
