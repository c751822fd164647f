"""Two-sample metrics for low-dimensional samples (docs/score_matching.md §7). Always compare with an iid floor."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def mmd2_unbiased(x: Array, y: Array, bandwidth: float = 1.0) -> Array:
    """Unbiased MMD^2 U-statistic with RBF kernel ``exp(-||a - b||^2 / (2 h^2))``; ``x: (n, d)``, ``y: (m, d)``."""

    def k(a, b):
        d2 = jnp.sum((a[:, None] - b[None]) ** 2, -1)
        return jnp.exp(-d2 / (2.0 * bandwidth**2))

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return sxx + syy - 2.0 * jnp.mean(kxy)
