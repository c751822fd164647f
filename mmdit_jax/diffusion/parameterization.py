"""One conversion layer between score, eps, x0 and velocity (conventions in the package docstring).

At time ``t`` with path coefficients ``(alpha, sigma, alpha', sigma')``, every parameterisation is an
affine function of the pair ``(x0_hat, eps_hat)`` given ``x = alpha x0_hat + sigma eps_hat``:

    score    = -eps_hat / sigma                       (Tweedie)
    eps      = eps_hat
    x0       = x0_hat
    velocity = alpha' x0_hat + sigma' eps_hat

and each is inverted back to ``(x0_hat, eps_hat)`` by solving that 2x2 system. For rectified flow
(alpha = 1 - t, sigma = t) this gives SD3's ``x0 = x - t v``, ``eps = x + (1 - t) v``,
``score = -(x + (1 - t) v) / t``.

Because the maps are affine in the model output for fixed ``(x, t)``, guidance (a linear combination of
outputs with weights summing to one) commutes with conversion.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.schedules import Schedule, bcast
from mmdit_jax.checks import check_choice

Array = jax.Array
Net = Callable[[Array, Array], Array]  # net(x: (B, ...), t: (B,)) -> output: (B, ...)

PARAMETERIZATIONS = ("score", "eps", "x0", "velocity")


def to_x0_eps(output: Array, x: Array, t: Array, schedule: Schedule, kind: str) -> tuple[Array, Array]:
    """``(x0_hat, eps_hat)`` implied by a model ``output`` of parameterisation ``kind`` at ``(x, t)``."""
    check_choice("parameterization", kind, PARAMETERIZATIONS)
    alpha, sigma, dalpha, dsigma = (bcast(c, x) for c in schedule.marginal_with_derivatives(t))
    if kind == "score":
        eps = -sigma * output
        return (x - sigma * eps) / alpha, eps
    if kind == "eps":
        return (x - sigma * output) / alpha, output
    if kind == "x0":
        return output, (x - alpha * output) / sigma
    # velocity: [x; v] = [[alpha, sigma], [alpha', sigma']] [x0; eps]
    det = alpha * dsigma - sigma * dalpha
    return (dsigma * x - sigma * output) / det, (alpha * output - dalpha * x) / det


def from_x0_eps(x0: Array, eps: Array, x: Array, t: Array, schedule: Schedule, kind: str) -> Array:
    """The parameterisation ``kind`` of the pair ``(x0, eps)`` at ``(x, t)``."""
    check_choice("parameterization", kind, PARAMETERIZATIONS)
    alpha, sigma, dalpha, dsigma = (bcast(c, x) for c in schedule.marginal_with_derivatives(t))
    del alpha
    if kind == "score":
        return -eps / sigma
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    return dalpha * x0 + dsigma * eps


def convert(output: Array, x: Array, t: Array, schedule: Schedule, src: str, dst: str) -> Array:
    """Convert a model output from parameterisation ``src`` to ``dst``."""
    if src == dst:
        check_choice("parameterization", src, PARAMETERIZATIONS)
        return output
    x0, eps = to_x0_eps(output, x, t, schedule, src)
    return from_x0_eps(x0, eps, x, t, schedule, dst)


def as_parameterization(net: Net, schedule: Schedule, src: str, dst: str) -> Net:
    """Wrap ``net`` (which outputs ``src``) so it returns ``dst``: e.g. a score function of a flow model."""
    check_choice("parameterization", src, PARAMETERIZATIONS)
    check_choice("parameterization", dst, PARAMETERIZATIONS)

    def wrapped(x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.result_type(float)), x.shape[:1])
        return convert(net(x, t), x, t, schedule, src, dst)

    return wrapped


def ve_score_fn(net: Net, schedule: Schedule, kind: str) -> Callable[[Array, Array], Array]:
    """NCSN-style ``score_fn(y, sigma)`` for any schedule, by the change of variables ``y = x / alpha``.

    ``y = x0 + sigma_ve eps`` with ``sigma_ve = sigma(t) / alpha(t)``, so ``p(y)`` is the data convolved with
    ``N(0, sigma_ve^2 I)`` exactly and ``s_VE(y, sigma_ve) = alpha * s_x(alpha y, t)``. This lets annealed
    Langevin dynamics run unchanged on a VP, EDM or rectified-flow model.
    """
    score_net = as_parameterization(net, schedule, kind, "score")

    def score_fn(y: Array, sigma_ve: Array) -> Array:
        t = jnp.broadcast_to(schedule.t_from_ve_sigma(jnp.asarray(sigma_ve, jnp.result_type(float))), y.shape[:1])
        alpha = bcast(schedule.marginal(t)[0], y)
        return alpha * score_net(alpha * y, t)

    return score_fn
