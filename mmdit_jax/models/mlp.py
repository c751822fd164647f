"""A noise-conditional MLP for low-dimensional data (the NCSN 2D toy uses a 3-layer softplus MLP).

``out = MLP([x, log sigma])``; the input scaling and the noise-level features are the model family's
(``mmdit_jax.families.mlp.mlp_net`` turns it into ``net(x, t)`` for any schedule).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

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
