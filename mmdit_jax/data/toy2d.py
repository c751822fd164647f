"""Isotropic Gaussian mixtures with exact perturbed scores: the NCSN 2D toy (docs/score_matching.md §6).

``p = sum_k w_k N(mu_k, s^2 I)``. Under VE noise ``sigma`` the exact perturbed density is the same mixture with
variance ``s^2 + sigma^2`` (``score(x, sigma)``). The NCSN repository instead *replaces* the component
std by ``sigma`` (``ncsn_repo_score``); the two agree at ``sigma = s``, and the published 2D numbers use the latter.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    weights: tuple[float, ...]
    means: tuple[tuple[float, ...], ...]
    std: float = 1.0

    @property
    def dim(self) -> int:
        return len(self.means[0])

    def sample(self, key: Array, n: int) -> Array:
        """``(n, dim)`` i.i.d. samples."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, len(self.weights), (n,), p=jnp.asarray(self.weights))
        means = jnp.asarray(self.means, jnp.float32)[comp]
        return means + self.std * jax.random.normal(k_noise, (n, self.dim))

    def _score_with_var(self, x: Array, var: Array) -> Array:
        mu = jnp.asarray(self.means, jnp.float32)                       # (K, d)
        diff = x[:, None, :] - mu[None]                                  # (n, K, d)
        logits = jnp.log(jnp.asarray(self.weights)) - 0.5 * jnp.sum(diff**2, -1) / var
        resp = jax.nn.softmax(logits, axis=-1)                           # (n, K)
        return -jnp.einsum("nk,nkd->nd", resp, diff) / var

    def score(self, x: Array, sigma: Array | float = 0.0) -> Array:
        """Exact score of the data convolved with ``N(0, sigma^2 I)``; ``x: (n, dim)``."""
        return self._score_with_var(x, self.std**2 + jnp.asarray(sigma, jnp.float32) ** 2)

    def ncsn_repo_score(self, x: Array, sigma: Array | float) -> Array:
        """The NCSN repo's annealed score: component std replaced by ``sigma`` (equals the data score at sigma = std)."""
        return self._score_with_var(x, jnp.asarray(sigma, jnp.float32) ** 2)

    def component(self, x: Array) -> Array:
        """Most responsible component under the true (unperturbed) mixture, ``(n,)`` ints."""
        mu = jnp.asarray(self.means, jnp.float32)
        logits = jnp.log(jnp.asarray(self.weights)) - 0.5 * jnp.sum((x[:, None] - mu[None]) ** 2, -1) / self.std**2
        return jnp.argmax(logits, axis=-1)

    def mode_weights(self, x: Array) -> Array:
        """Fraction of samples assigned to each component, ``(K,)``."""
        comp = self.component(x)
        return jnp.mean(comp[:, None] == jnp.arange(len(self.weights))[None], axis=0)


NCSN_MIXTURE = GaussianMixture(weights=(0.8, 0.2), means=((5.0, 5.0), (-5.0, -5.0)), std=1.0)
"""0.8 N((5,5), I) + 0.2 N((-5,-5), I); component 0 is the (5, 5) mode. Bayes boundary x + y = -ln(4)/10."""

BINOMIAL_SE_0_8 = math.sqrt(0.8 * 0.2 / 1280)
