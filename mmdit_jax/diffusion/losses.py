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
ssm        sigma_ve^2 (v^T (grad s) v + 1/2 ||s||^2)              NCSN SSM-VR (not denoising)   sum
=========  =====================================================  ============================  ===========

(1/2 sum over data dimensions for DSM so that its minimum is the closed form 1/2 D s^2 / (s^2 + sigma^2) of
Gaussian data; mean over dimensions elsewhere, as diffusers/SD3 do.) For ``dsm`` the sigma is the VE noise
level ``sigma/alpha`` and the score is that of ``y = x / alpha``, so the loss is the NCSN loss for any path.

``sliced_score_matching`` is the variance-reduced SSM objective ``E[v^T (grad s) v + 1/2 ||s||^2]`` for a
score model without a perturbation kernel (one Jacobian-vector product per projection).

Each name is one entry of the ``LOSSES`` registry, a ``LossSpec``; ``register_loss`` adds one. A denoising loss
is its per-example maths ``maths(out, x0, x_t, eps, t, schedule, parameterization) -> (B,)`` lifted by
``denoising_fn``, which draws ``t`` and ``eps`` and calls the network once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.parameterization import Net, convert
from mmdit_jax.diffusion.schedules import EDMSchedule, Schedule, bcast
from mmdit_jax.checks import ConfigError, check_choice, check_positive_int

__all__ = [
    "LOSSES", "DENOISING_LOSSES", "LossSpec", "LossFn", "DenoisingMaths", "register_loss", "denoising_fn",
    "make_loss_fn", "denoising_loss", "sliced_score_matching", "noise_conditional_ssm",
    "dsm_loss", "eps_loss", "velocity_loss", "edm_loss",
]

Array = jax.Array


class LossFn(Protocol):
    """``fn(net, x0: (B, ...), key, schedule, parameterization, t: (B,) | None) -> (per-example (B,), t (B,))``."""

    def __call__(self, net: Net, x0: Array, key: Array, schedule: Schedule, parameterization: str,
                 t: Array | None = None) -> tuple[Array, Array]: ...


# maths(out, x0, x_t, eps, t, schedule, parameterization) -> per-example loss (B,); out, x0, x_t, eps: (B, ...)
DenoisingMaths = Callable[[Array, Array, Array, Array, Array, Schedule, str], Array]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One registered loss.

    ``fn``: the loss, a ``LossFn``. ``denoising``: it draws ``t`` and a Gaussian perturbation, so it accepts a
    fixed ``t`` and can be evaluated per noise level. ``forward_mode``: it differentiates the network's forward
    pass with ``jax.jvp``, so the model must not use hand-written reverse-mode gradients (``custom_vjp``).
    ``validate(schedule)``, when given, raises ``ConfigError`` if the loss cannot be used with ``schedule``.
    """

    fn: LossFn
    denoising: bool = True
    forward_mode: bool = False
    validate: Callable[[Schedule], None] | None = None


def _flat(x: Array) -> Array:
    return x.reshape(x.shape[0], -1)


# --- denoising losses -----------------------------------------------------------------------------------------


def dsm_loss(out: Array, x0: Array, x_t: Array, eps: Array, t: Array, schedule: Schedule,
             parameterization: str) -> Array:
    """Denoising score matching with ``lambda = sigma_ve^2``: ``1/2 ||sigma s(x_t) + eps||^2`` (sum), ``(B,)``.

    On the score of ``y = x / alpha``, ``sigma_ve * score_y = sigma * score_x``, so this is NCSN Eq. 6 on any path.
    """
    score = convert(out, x_t, t, schedule, parameterization, "score")
    sigma = bcast(schedule.marginal(t)[1], x0)
    return 0.5 * jnp.sum(_flat(sigma * score + eps) ** 2, axis=-1)


def eps_loss(out: Array, x0: Array, x_t: Array, eps: Array, t: Array, schedule: Schedule,
             parameterization: str) -> Array:
    """Noise prediction: ``||eps_hat(x_t) - eps||^2`` (mean over dimensions), ``(B,)``."""
    eps_hat = convert(out, x_t, t, schedule, parameterization, "eps")
    return jnp.mean(_flat(eps_hat - eps) ** 2, axis=-1)


def velocity_loss(out: Array, x0: Array, x_t: Array, eps: Array, t: Array, schedule: Schedule,
                  parameterization: str) -> Array:
    """Flow matching: ``||v_hat(x_t) - (alpha'(t) x0 + sigma'(t) eps)||^2`` (mean over dimensions), ``(B,)``."""
    v_hat = convert(out, x_t, t, schedule, parameterization, "velocity")
    _, _, dalpha, dsigma = (bcast(c, x0) for c in schedule.marginal_with_derivatives(t))
    return jnp.mean(_flat(v_hat - (dalpha * x0 + dsigma * eps)) ** 2, axis=-1)


def edm_loss(out: Array, x0: Array, x_t: Array, eps: Array, t: Array, schedule: Schedule,
             parameterization: str) -> Array:
    """EDM: ``lambda(sigma) ||x0_hat(x_t) - x0||^2`` (mean over dimensions), ``lambda = 1 / c_out^2``, ``(B,)``.

    Needs an ``EDMSchedule`` (for ``loss_weight``).
    """
    x0_hat = convert(out, x_t, t, schedule, parameterization, "x0")
    return schedule.loss_weight(t) * jnp.mean(_flat(x0_hat - x0) ** 2, axis=-1)


def denoising_fn(maths: DenoisingMaths) -> LossFn:
    """Lift per-example ``maths`` to a ``LossFn`` that draws ``t`` (unless given) and ``eps ~ N(0, I)``.

    ``x_t = alpha(t) x0 + sigma(t) eps``; the network is called once, ``out = net(x_t, t)``, and must return
    ``x0``'s shape.
    """

    def fn(net: Net, x0: Array, key: Array, schedule: Schedule, parameterization: str,
           t: Array | None = None) -> tuple[Array, Array]:
        key_t, key_eps = jax.random.split(key)
        if t is None:
            t = schedule.sample_t(key_t, x0.shape[0])
        noise = jax.random.normal(key_eps, x0.shape, x0.dtype)
        x_t = schedule.perturb(x0, noise, t)
        out = net(x_t, t)
        if out.shape != x0.shape:
            raise ConfigError(f"model output shape {out.shape} does not match data shape {x0.shape}")
        return maths(out, x0, x_t, noise, t, schedule, parameterization), t

    return fn


def _needs_edm_schedule(schedule: Schedule) -> None:
    if not isinstance(schedule, EDMSchedule):
        raise ConfigError(f"loss.name='edm' needs schedule.name='edm', got {type(schedule).__name__}")


# --- sliced score matching ------------------------------------------------------------------------------------


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

    ``x0: (B, ...)`` -> ``(per-example loss (B,), t (B,))``. Its optimum is the same perturbed score that DSM
    learns; useful where no perturbation kernel exists.
    """
    key_t, key_eps, key_v = jax.random.split(key, 3)
    t = schedule.sample_t(key_t, x0.shape[0])
    x_t = schedule.perturb(x0, jax.random.normal(key_eps, x0.shape, x0.dtype), t)

    def score_fn(x):
        return convert(net(x, t), x, t, schedule, parameterization, "score")

    return schedule.ve_sigma(t) ** 2 * sliced_score_matching(score_fn, x_t, key_v), t


def _ssm(net: Net, x0: Array, key: Array, schedule: Schedule, parameterization: str,
         t: Array | None = None) -> tuple[Array, Array]:
    if t is not None:
        raise ConfigError("loss.name='ssm' draws its own noise levels and takes no fixed t; "
                          f"a fixed t needs a denoising loss, one of {sorted(_denoising_names())}")
    return noise_conditional_ssm(net, x0, key, schedule, parameterization)


# --- registry -------------------------------------------------------------------------------------------------


LOSSES: dict[str, LossSpec] = {
    "dsm": LossSpec(denoising_fn(dsm_loss)),
    "eps": LossSpec(denoising_fn(eps_loss)),
    "velocity": LossSpec(denoising_fn(velocity_loss)),
    "edm": LossSpec(denoising_fn(edm_loss), validate=_needs_edm_schedule),
    "ssm": LossSpec(_ssm, denoising=False, forward_mode=True),
}


def _denoising_names() -> tuple[str, ...]:
    return tuple(name for name, spec in LOSSES.items() if spec.denoising)


def __getattr__(name: str) -> Any:
    # DENOISING_LOSSES is read from the registry on each access, so it follows register_loss and removals.
    if name == "DENOISING_LOSSES":
        return _denoising_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_loss(name: str, spec: LossSpec) -> None:
    """Add ``spec`` to ``LOSSES`` as ``loss.name=name``; a name already taken raises ``ConfigError``."""
    if not isinstance(spec, LossSpec):
        raise TypeError(f"register_loss({name!r}, ...) needs a LossSpec, got {type(spec).__name__}")
    if name in LOSSES:
        raise ConfigError(f"loss.name={name!r} is already registered; registered names are {sorted(LOSSES)}")
    LOSSES[name] = spec


def _spec(loss: str, schedule: Schedule) -> LossSpec:
    check_choice("loss.name", loss, LOSSES)
    spec = LOSSES[loss]
    if spec.validate is not None:
        spec.validate(schedule)
    return spec


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

    ``loss`` names a denoising entry of ``LOSSES``. ``t: (B,)`` may be given (e.g. for per-noise-level
    validation); otherwise it is drawn by ``schedule.sample_t``. Returns ``(per-example loss (B,), t (B,))``.
    """
    spec = LOSSES.get(loss)
    if spec is None:
        check_choice("loss.name", loss, _denoising_names())
    elif not spec.denoising:
        raise ConfigError(f"loss.name={loss!r} is not a denoising loss (it cannot be evaluated at a fixed t); "
                          f"choose one of {sorted(_denoising_names())}")
    return _spec(loss, schedule).fn(net, x0, key, schedule, parameterization, t)


def make_loss_fn(loss: str, schedule: Schedule, parameterization: str) -> Callable[[Net, Array, Array], tuple[Array, Array]]:
    """Look up ``loss`` in ``LOSSES`` and check it against ``schedule`` now, at construction.

    Returns ``loss_fn(net, x0: (B, ...), key) -> (per-example loss (B,), t (B,))``.
    """
    fn = _spec(loss, schedule).fn
    return lambda net, x0, key: fn(net, x0, key, schedule, parameterization)
