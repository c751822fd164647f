"""Score-matching losses. Each returns per-example losses ``(B,)`` and the drawn times ``t: (B,)``.

Denoising losses draw ``t`` from the schedule, perturb ``x_t = alpha x0 + sigma eps`` and compare the model,
converted to the loss's *target space*, with the known target:

=========  =====================================================  ============================  ===========
name       per-example loss                                       reference                     reduction
=========  =====================================================  ============================  ===========
dsm        ``lambda(sigma) = sigma^2``: 1/2 ||sigma s + eps||^2   NCSN Eq. 6 (VE: sigma/alpha)  1/2 sum
eps        ||eps_hat - eps||^2                                    DDPM / Score SDE (VP)         mean
velocity   ||v_hat - (alpha' x0 + sigma' eps)||^2                 SD3 flow matching             mean
edm        lambda(sigma) ||x0_hat - x0||^2, 1/c_out^2 weighting   EDM Eq. 8, Table 1            mean
=========  =====================================================  ============================  ===========

(1/2 sum over data dimensions for DSM so that its minimum is the closed form 1/2 D s^2 / (s^2 + sigma^2) of
Gaussian data; mean over dimensions elsewhere, as diffusers/SD3 do.) For ``dsm`` the sigma is the VE noise
level ``sigma/alpha`` and the score is that of ``y = x / alpha``, so the loss is the NCSN loss for any path.

``sliced_score_matching`` is the variance-reduced SSM objective ``E[v^T (grad s) v + 1/2 ||s||^2]`` for a
score model without a perturbation kernel (one Jacobian-vector product per projection).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.parameterization import Net, convert
from mmdit_jax.diffusion.schedules import EDMSchedule, Schedule, bcast
from mmdit_jax.checks import ConfigError, check_choice, check_positive_int

Array = jax.Array

LOSSES = ("dsm", "eps", "velocity", "edm", "ssm")


def _flat(x: Array) -> Array:
    return x.reshape(x.shape[0], -1)


def denoising_loss(
    net: Net,
    x0: Array,
    key: Array,
    schedule: Schedule,
    parameterization: str,
    loss: str,
    t: Array | None = None,
) -> tuple[Array, Array]:
    """Per-example denoising loss ``(B,)`` of ``net`` (outputting ``parameterization``) on data ``x0: (B, ...)``.

    ``t`` may be given (e.g. for per-noise-level validation); otherwise it is drawn by ``schedule.sample_t``.
    """
    check_choice("loss.name", loss, ("dsm", "eps", "velocity", "edm"))
    key_t, key_eps = jax.random.split(key)
    if t is None:
        t = schedule.sample_t(key_t, x0.shape[0])
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    x_t = schedule.perturb(x0, eps, t)
    out = net(x_t, t)
    if out.shape != x0.shape:
        raise ConfigError(f"model output shape {out.shape} does not match data shape {x0.shape}")
    if loss == "dsm":
        score = convert(out, x_t, t, schedule, parameterization, "score")
        sigma = bcast(schedule.marginal(t)[1], x0)
        # lambda = sigma_ve^2 on the score of y = x / alpha: sigma_ve * score_y = sigma * score_x.
        per = 0.5 * jnp.sum(_flat(sigma * score + eps) ** 2, axis=-1)
    elif loss == "eps":
        eps_hat = convert(out, x_t, t, schedule, parameterization, "eps")
        per = jnp.mean(_flat(eps_hat - eps) ** 2, axis=-1)
    elif loss == "velocity":
        v_hat = convert(out, x_t, t, schedule, parameterization, "velocity")
        _, _, dalpha, dsigma = (bcast(c, x0) for c in schedule.marginal_with_derivatives(t))
        per = jnp.mean(_flat(v_hat - (dalpha * x0 + dsigma * eps)) ** 2, axis=-1)
    else:
        if not isinstance(schedule, EDMSchedule):
            raise ConfigError(f"loss.name='edm' needs schedule.name='edm', got {type(schedule).__name__}")
        x0_hat = convert(out, x_t, t, schedule, parameterization, "x0")
        per = schedule.loss_weight(t) * jnp.mean(_flat(x0_hat - x0) ** 2, axis=-1)
    return per, t


def sliced_score_matching(
    score_fn: Callable[[Array], Array], x: Array, key: Array, n_particles: int = 1
) -> Array:
    """Per-example SSM-VR ``v^T (d s / d x) v + 1/2 ||s(x)||^2``, ``v ~ N(0, I)``; ``x: (B, ...)`` -> ``(B,)``.

    ``score_fn`` maps a batch to a batch of scores and must act on examples independently (as networks
    without batch-coupling layers do), so one JVP gives every example's ``(d s/d x) v``.
    """
    check_positive_int("n_particles", n_particles)

    def one(v):
        s, jv = jax.jvp(score_fn, (x,), (v,))
        return jnp.sum(_flat(v * jv), -1) + 0.5 * jnp.sum(_flat(s) ** 2, -1)

    vs = jax.random.normal(key, (n_particles,) + x.shape, x.dtype)
    return jnp.mean(jax.vmap(one)(vs), axis=0)


def noise_conditional_ssm(
    net: Net, x0: Array, key: Array, schedule: Schedule, parameterization: str
) -> tuple[Array, Array]:
    """SSM-VR on perturbed data at random levels, weighted by ``sigma_ve^2`` (NCSN's annealed SSM).

    Its optimum is the same perturbed score that DSM learns; useful where no perturbation kernel exists.
    """
    key_t, key_eps, key_v = jax.random.split(key, 3)
    t = schedule.sample_t(key_t, x0.shape[0])
    x_t = schedule.perturb(x0, jax.random.normal(key_eps, x0.shape, x0.dtype), t)

    def score_fn(x):
        return convert(net(x, t), x, t, schedule, parameterization, "score")

    return schedule.ve_sigma(t) ** 2 * sliced_score_matching(score_fn, x_t, key_v), t


def make_loss_fn(loss: str, schedule: Schedule, parameterization: str) -> Callable[[Net, Array, Array], tuple[Array, Array]]:
    """Registry by name: ``loss_fn(net, x0, key) -> (per-example loss (B,), t (B,))``."""
    check_choice("loss.name", loss, LOSSES)
    if loss == "ssm":
        return lambda net, x0, key: noise_conditional_ssm(net, x0, key, schedule, parameterization)
    return lambda net, x0, key: denoising_loss(net, x0, key, schedule, parameterization, loss)
