"""Langevin dynamics and NCSN annealed Langevin dynamics (Algorithm 1), step convention B.

    x <- x + a * score(x, sigma) + sqrt(2 a) * z,    z ~ N(0, I)

Annealed: over the ladder ``sigma_1 > ... > sigma_L`` with ``a_i = step_size * sigma_i^2 / sigma_L^2`` and
``n_steps_each`` steps per level; optional final Tweedie denoising ``x + sigma_L^2 score(x, sigma_L)``.
The NCSN paper's convention A step ``eps_A`` is ``step_size = eps_A / 2`` here.

Both loops are ``lax.scan`` / ``fori_loop``: calling them under ``jax.jit`` compiles one XLA program.
``score_fn(x: (B, ...), sigma: scalar) -> score: (B, ...)``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_positive, check_positive_int

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def check_score_fn(score_fn: ScoreFn, x: Array, sigma: Array) -> None:
    """Fail at trace time, naming the shapes, if ``score_fn`` does not return the shape of ``x``."""
    out = jax.eval_shape(score_fn, x, jnp.asarray(sigma, jnp.float32))
    if getattr(out, "shape", None) != x.shape:
        raise ConfigError(f"score_fn(x, sigma) returned shape {getattr(out, 'shape', out)}, expected x.shape {x.shape}")


def _check_step(name: str, value) -> None:
    if isinstance(value, (int, float)):  # traced values are checked by the caller's config validation
        check_positive(name, value)


def langevin_step(score_fn: ScoreFn, x: Array, sigma: Array, a: Array, key: Array) -> Array:
    """One unadjusted Langevin step ``x + a s(x, sigma) + sqrt(2 a) z``."""
    z = jax.random.normal(key, x.shape, x.dtype)
    return x + a * score_fn(x, sigma) + jnp.sqrt(2.0 * a) * z


def langevin(
    score_fn: ScoreFn, x: Array, n_steps: int, step_size: float, key: Array, sigma: float = 0.0
) -> Array:
    """Plain Langevin dynamics at a single noise level ``sigma`` (0: the data score). Returns ``(B, ...)``."""
    check_positive_int("n_steps", n_steps)
    _check_step("step_size", step_size)
    sigma = jnp.asarray(sigma, jnp.float32)
    check_score_fn(score_fn, x, sigma)

    def body(i, x):
        return langevin_step(score_fn, x, sigma, step_size, jax.random.fold_in(key, i))

    return jax.lax.fori_loop(0, n_steps, body, x)


def annealed_langevin(
    score_fn: ScoreFn,
    x: Array,
    sigmas: Array,
    n_steps_each: int,
    step_size: float,
    key: Array,
    denoise: bool = False,
) -> Array:
    """NCSN annealed Langevin dynamics over ``sigmas: (L,)`` (descending). Returns ``(B, ...)``."""
    check_positive_int("n_steps_each", n_steps_each)
    _check_step("step_size", step_size)
    sigmas = jnp.asarray(sigmas, jnp.float32)
    if sigmas.ndim != 1 or sigmas.shape[0] < 1:
        raise ConfigError(f"sigmas must be a non-empty 1-D array of noise levels, got shape {sigmas.shape}")
    check_score_fn(score_fn, x, sigmas[0])
    sigma_last = sigmas[-1]

    def level(x, inputs):
        i, sigma = inputs
        a = step_size * (sigma / sigma_last) ** 2
        key_i = jax.random.fold_in(key, i)

        def body(j, x):
            return langevin_step(score_fn, x, sigma, a, jax.random.fold_in(key_i, j))

        return jax.lax.fori_loop(0, n_steps_each, body, x), None

    x, _ = jax.lax.scan(level, x, (jnp.arange(sigmas.shape[0]), sigmas))
    if denoise:
        x = x + sigma_last**2 * score_fn(x, sigma_last)
    return x
