"""Noise schedules as Gaussian paths ``x_t = alpha(t) x0 + sigma(t) eps`` (see package docstring).

Each schedule gives what training needs (``sample_t``: draw noise levels; ``perturb``) and what sampling
needs (``timesteps``: a grid from high to low noise; ``sde``: drift and diffusion of the forward SDE;
``t_from_ve_sigma``: the change of variables to NCSN/VE coordinates ``y = x / alpha``, ``sigma_ve = sigma / alpha``).

Schedules are frozen dataclasses of Python floats, so they are hashable and can be static jit arguments.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_less, check_positive, check_positive_int

Array = jax.Array


class Schedule:
    """Base class. Subclasses define ``marginal`` and the training / sampling grids."""

    t_min: float
    t_max: float

    def marginal(self, t: Array) -> tuple[Array, Array]:
        """``(alpha(t), sigma(t))`` for ``t`` of any shape."""
        raise NotImplementedError

    def marginal_with_derivatives(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """``(alpha, sigma, alpha', sigma')`` by forward-mode differentiation of ``marginal``."""
        t = _float(t)
        (alpha, sigma), (dalpha, dsigma) = jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))
        return alpha, sigma, dalpha, dsigma

    def sde(self, t: Array) -> tuple[Array, Array]:
        """Forward SDE ``dx = f(t) x dt + g(t) dw`` with the same marginals: returns ``(f, g^2)``.

        ``f = alpha'/alpha`` and ``g^2 = d(sigma^2)/dt - 2 f sigma^2``.
        """
        alpha, sigma, dalpha, dsigma = self.marginal_with_derivatives(t)
        f = dalpha / alpha
        return f, 2.0 * sigma * dsigma - 2.0 * f * sigma**2

    def perturb(self, x0: Array, eps: Array, t: Array) -> Array:
        """``x_t = alpha(t) x0 + sigma(t) eps``; ``x0, eps: (B, ...)``, ``t: (B,)``."""
        alpha, sigma = self.marginal(t)
        return bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps

    def sample_t(self, key: Array, batch: int) -> Array:
        """Training noise levels ``t: (batch,)``."""
        raise NotImplementedError

    def timesteps(self, n: int) -> Array:
        """Sampling grid ``t_0 > t_1 > ... > t_n`` (``n + 1`` points, ``n`` steps)."""
        return jnp.linspace(self.t_max, self.t_min, n + 1)

    def t_from_ve_sigma(self, sigma_ve: Array) -> Array:
        """Invert ``sigma(t) / alpha(t) = sigma_ve``."""
        raise NotImplementedError

    def ve_sigma(self, t: Array) -> Array:
        """Noise-to-signal ratio ``sigma(t) / alpha(t)``: the NCSN noise level of ``y = x / alpha``."""
        alpha, sigma = self.marginal(t)
        return sigma / alpha


def _float(t: Array) -> Array:
    """Times as the default float dtype (float64 when x64 is enabled, for exactness tests)."""
    return jnp.asarray(t, jnp.result_type(float))


def bcast(c: Array, x: Array) -> Array:
    """Reshape a per-example coefficient ``(B,)`` (or a scalar) to broadcast against ``x: (B, ...)``."""
    c = jnp.asarray(c)
    if c.ndim == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


@dataclasses.dataclass(frozen=True)
class VESchedule(Schedule):
    """Variance exploding (Song et al. 2021): ``alpha = 1``, ``sigma(t) = s_min (s_max / s_min)^t``.

    Training draws ``t ~ U(t_min, 1)``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def marginal(self, t):
        t = _float(t)
        log_ratio = math.log(self.sigma_max / self.sigma_min)
        return jnp.ones_like(t), self.sigma_min * jnp.exp(t * log_ratio)

    def sample_t(self, key, batch):
        return jax.random.uniform(key, (batch,), minval=self.t_min, maxval=self.t_max)

    def t_from_ve_sigma(self, sigma_ve):
        return jnp.log(sigma_ve / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class NCSNSchedule(VESchedule):
    """NCSN (Song & Ermon 2019): ``L`` geometric levels ``sigma_1 = sigma_max > ... > sigma_L = sigma_min``.

    It is the VE path observed at ``t = linspace(1, 0, L)``; training draws one level per example
    uniformly, and ``sigmas`` is the ladder used by annealed Langevin dynamics.
    """

    sigma_min: float = 0.001
    sigma_max: float = 1.0
    num_levels: int = 10
    t_min: float = 0.0

    @property
    def level_times(self) -> Array:
        """``(L,)`` times of the levels, descending from 1 to 0."""
        return jnp.linspace(1.0, 0.0, self.num_levels)

    @property
    def sigmas(self) -> Array:
        """``(L,)`` geometric ladder ``exp(linspace(log sigma_max, log sigma_min, L))``."""
        return jnp.exp(jnp.linspace(math.log(self.sigma_max), math.log(self.sigma_min), self.num_levels))

    def sample_t(self, key, batch):
        idx = jax.random.randint(key, (batch,), 0, self.num_levels)
        return self.level_times[idx]


@dataclasses.dataclass(frozen=True)
class VPSchedule(Schedule):
    """Variance preserving (DDPM continuum): linear ``beta(t) = b_min + t (b_max - b_min)``.

    ``alpha(t) = exp(-B(t)/2)`` with ``B(t) = int_0^t beta = b_min t + (b_max - b_min) t^2 / 2``;
    ``sigma = sqrt(1 - alpha^2)``. Training draws ``t ~ U(t_min, 1)``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def _integral_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def marginal(self, t):
        t = _float(t)
        integral = self._integral_beta(t)
        return jnp.exp(-0.5 * integral), jnp.sqrt(-jnp.expm1(-integral))

    def sample_t(self, key, batch):
        return jax.random.uniform(key, (batch,), minval=self.t_min, maxval=self.t_max)

    def t_from_ve_sigma(self, sigma_ve):
        # sigma^2 / alpha^2 = e^B - 1  =>  B(t) = log(1 + sigma_ve^2); solve the quadratic in t.
        target = jnp.log1p(sigma_ve**2)
        a, b = 0.5 * (self.beta_max - self.beta_min), self.beta_min
        if a == 0:
            return target / b
        return (-b + jnp.sqrt(b * b + 4 * a * target)) / (2 * a)


@dataclasses.dataclass(frozen=True)
class EDMSchedule(Schedule):
    """EDM (Karras et al. 2022): ``alpha = 1, sigma = t``.

    Training: ``ln sigma ~ N(p_mean, p_std^2)``. Sampling grid:
    ``sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, then ``sigma_n = 0``.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5

    @property
    def t_min(self) -> float:
        return 0.0

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def marginal(self, t):
        t = _float(t)
        return jnp.ones_like(t), t

    def sample_t(self, key, batch):
        return jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, (batch,)))

    def timesteps(self, n):
        i = jnp.arange(n).astype(jnp.result_type(float))
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        frac = i / max(n - 1, 1)
        sig = (hi + frac * (lo - hi)) ** self.rho
        return jnp.concatenate([sig, jnp.zeros((1,), sig.dtype)])

    def t_from_ve_sigma(self, sigma_ve):
        return sigma_ve

    def loss_weight(self, sigma: Array) -> Array:
        """``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` on the x0 error."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


@dataclasses.dataclass(frozen=True)
class RectifiedFlowSchedule(Schedule):
    """Rectified flow, SD3 convention: ``x_t = (1 - t) x0 + t eps``, ``t = 0`` data, ``t = 1`` noise.

    Training: ``t = shift(sigmoid(u))``, ``u ~ N(logit_mean, logit_std^2)`` (logit-normal; SD3's
    rf/lognorm(0, 1)), or ``t = shift(U(0, 1))``. The timestep shift ``shift(t) = s t / (1 + (s - 1) t)``.
    The sampling grid equals diffusers' ``FlowMatchEulerDiscreteScheduler``: ``linspace(1, shift(1/T), n)``
    shifted a second time, then ``0`` appended.
    """

    shift: float = 1.0
    t_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    num_train_timesteps: int = 1000
    t_min: float = 0.0
    t_max: float = 1.0

    def shift_t(self, t: Array) -> Array:
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def marginal(self, t):
        t = _float(t)
        return 1.0 - t, t

    def sample_t(self, key, batch):
        if self.t_sampling == "logit_normal":
            t = jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(key, (batch,)))
        else:
            t = jax.random.uniform(key, (batch,))
        return self.shift_t(t)

    def timesteps(self, n):
        t_last = self.shift_t(1.0 / self.num_train_timesteps)
        t = self.shift_t(jnp.linspace(1.0, t_last, n))
        return jnp.concatenate([t, jnp.zeros((1,), t.dtype)])

    def t_from_ve_sigma(self, sigma_ve):
        return sigma_ve / (1.0 + sigma_ve)


# ---------------------------------------------------------------------------------------------------
# Registry: config -> schedule. Configs are data; this is the one place they are turned into objects.

SCHEDULES: dict[str, type[Schedule]] = {
    "ncsn": NCSNSchedule,
    "ve": VESchedule,
    "vp": VPSchedule,
    "edm": EDMSchedule,
    "rectified_flow": RectifiedFlowSchedule,
}


def get_schedule(config: Any) -> Schedule:
    """Build a schedule from a mapping / ConfigDict with ``name`` and that schedule's fields.

    Raises ConfigError naming the field for an unknown name, unknown keys or invalid values.
    """
    cfg = dict(config)
    name = cfg.pop("name", None)
    check_choice("schedule.name", name, SCHEDULES)
    cls = SCHEDULES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    check_keys(f"schedule ({name})", cfg, fields)
    sched = cls(**cfg)
    _validate(sched)
    return sched


def _validate(s: Schedule) -> None:
    if isinstance(s, (VESchedule, EDMSchedule)):
        check_positive("schedule.sigma_min", s.sigma_min)
        check_less("schedule.sigma_min", s.sigma_min, "schedule.sigma_max", s.sigma_max)
    if isinstance(s, NCSNSchedule):
        check_positive_int("schedule.num_levels", s.num_levels)
    if isinstance(s, VPSchedule):
        check_positive("schedule.beta_min", s.beta_min)
        check_less("schedule.beta_min", s.beta_min, "schedule.beta_max", s.beta_max)
    if isinstance(s, EDMSchedule):
        check_positive("schedule.rho", s.rho)
        check_positive("schedule.p_std", s.p_std)
        check_positive("schedule.sigma_data", s.sigma_data)
    if isinstance(s, RectifiedFlowSchedule):
        check_positive("schedule.shift", s.shift)
        check_positive("schedule.logit_std", s.logit_std)
        check_choice("schedule.t_sampling", s.t_sampling, ("logit_normal", "uniform"))
        check_positive_int("schedule.num_train_timesteps", s.num_train_timesteps)
    if isinstance(s, (VESchedule, VPSchedule, RectifiedFlowSchedule)) and not 0 <= s.t_min < s.t_max:
        raise ConfigError(f"schedule.t_min ({s.t_min}) must satisfy 0 <= t_min < t_max ({s.t_max})")

