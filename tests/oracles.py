"""Closed-form oracles for Gaussian data N(mu, s^2 I) under a Gaussian path x = alpha x0 + sigma eps.

Derived independently of the package (docs/score_matching.md §8): x ~ N(alpha mu, (alpha^2 s^2 + sigma^2) I),
and (x0, eps) | x are Gaussian with the posterior means below.
"""

import jax.numpy as jnp


def gaussian_posterior(x, mu, s, alpha, sigma):
    """Exact (score, x0_hat, eps_hat) at x for data N(mu, s^2 I); alpha, sigma broadcastable to x."""
    var = alpha**2 * s**2 + sigma**2
    r = x - alpha * mu
    return -r / var, mu + alpha * s**2 * r / var, sigma * r / var


def gaussian_mixture_rf_posterior(x, t, weights, means, s):
    """Exact E[x0|x], E[eps|x] and score for a 1-D Gaussian mixture under x = (1-t) x0 + t eps (float64)."""
    a, b = 1.0 - t, t
    w, m = jnp.asarray(weights), jnp.asarray(means)
    var = a**2 * s**2 + b**2
    logp = jnp.log(w) - 0.5 * (x[:, None] - a * m) ** 2 / var - 0.5 * jnp.log(var)
    resp = jnp.exp(logp - jnp.max(logp, -1, keepdims=True))
    resp = resp / resp.sum(-1, keepdims=True)
    x0_k = m + a * s**2 * (x[:, None] - a * m) / var
    eps_k = b * (x[:, None] - a * m) / var
    score_k = -(x[:, None] - a * m) / var
    return (resp * x0_k).sum(-1), (resp * eps_k).sum(-1), (resp * score_k).sum(-1)
