"""A noise-conditional MLP for low-dimensional data (the NCSN 2D toy uses a 3-layer softplus MLP).

``eps_hat = MLP([c_in x, log sigma])`` with EDM's input scaling ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``,
so every noise level sees O(1) inputs; the wrapper ``mlp_net`` turns it into ``net(x, t)`` for a schedule.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.schedules import Schedule

Array = jax.Array


class NoiseConditionalMLP(nn.Module):
    """``(x: (B, d), log_sigma: (B,)) -> (B, d)``."""

    hidden: int = 128
    depth: int = 3

    @nn.compact
    def __call__(self, x: Array, log_sigma: Array) -> Array:
        h = jnp.concatenate([x, log_sigma[:, None]], axis=-1)
        for _ in range(self.depth):
            h = nn.softplus(nn.Dense(self.hidden)(h))
        return nn.Dense(x.shape[-1])(h)


def mlp_net(module: NoiseConditionalMLP, params: Any, schedule: Schedule, sigma_data: float) -> Callable[[Array, Array], Array]:
    """``net(x, t) -> eps_hat`` for a VE-type schedule (alpha = 1): conditions on ``log sigma(t)``."""

    def net(x: Array, t: Array) -> Array:
        alpha, sigma = schedule.marginal(t)
        sigma_ve = sigma / alpha
        c_in = 1.0 / jnp.sqrt(sigma_ve**2 + sigma_data**2)
        return module.apply(params, (x / alpha[:, None]) * c_in[:, None], jnp.log(sigma_ve))

    return net
