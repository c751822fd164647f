"""Samplers, chosen by name from a config: ``make_sampler(config, schedule, parameterization)``.

=================  ============================================================  =====================
name               algorithm                                                     config fields
=================  ============================================================  =====================
langevin           plain Langevin at the lowest noise level (convention B)       n_steps, step_size
annealed_langevin  NCSN Alg. 1 over a geometric ladder, via y = x / alpha         n_steps_each, step_size,
                                                                                 num_levels, sigma_max,
                                                                                 sigma_min, denoise
pc                 reverse-diffusion predictor + Langevin corrector              n_steps, snr, n_corrector,
                                                                                 denoise
ode                probability-flow ODE, Euler or Heun                           n_steps, method
flow_euler         SD3 flow-matching Euler (rectified-flow schedule only)        n_steps
flow_match_euler   Euler on diffusers' FlowMatchEulerDiscreteScheduler grid      n_steps, shift, mu,
                   exactly (SD3 / SD3.5 static shift, FLUX dynamic shift;        use_dynamic_shifting,
                   rectified-flow schedule only; ``diffusion/flow_match.py``)   sigmas, ... (see there)
=================  ============================================================  =====================

Each name is one entry of the ``SAMPLERS`` registry, a ``SamplerSpec`` holding the config fields with their
defaults, a ``validate(settings, schedule)`` for start-up checks and a ``build(settings, schedule,
parameterization)`` that returns the sampler. ``register_sampler`` adds one.

The returned ``sample(net, key, shape)`` is a pure function; wrap it in ``jax.jit`` (with ``net`` closed over
the parameters) and the whole loop is one XLA program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.flow_match import (
    FLOW_MATCH_EULER_DEFAULTS, build_flow_match_euler, validate_flow_match_euler)
from mmdit_jax.diffusion.parameterization import PARAMETERIZATIONS, Net, as_parameterization, ve_score_fn
from mmdit_jax.diffusion.samplers.langevin import annealed_langevin, langevin
from mmdit_jax.diffusion.samplers.ode import probability_flow
from mmdit_jax.diffusion.samplers.sde import predictor_corrector
from mmdit_jax.diffusion.schedules import NCSNSchedule, RectifiedFlowSchedule, Schedule
from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_less, check_positive, check_positive_int

__all__ = [
    "SAMPLERS", "SamplerSpec", "register_sampler", "make_sampler", "prior_sample",
    "langevin", "annealed_langevin", "predictor_corrector", "probability_flow",
]

Array = jax.Array
Sampler = Callable[[Net, Array, tuple[int, ...]], Array]


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """One registered sampler.

    ``defaults``: every config field the sampler accepts (besides ``name``) with its default; ``None`` means
    "take it from the schedule". ``build(settings, schedule, parameterization)`` gets the defaults overlaid with
    the config and returns ``sample(net, key, shape) -> x: shape``. ``validate(settings, schedule)``, when given,
    runs before ``build`` and raises ``ConfigError`` naming the field (``sampler.<field>``) and what is valid.
    """

    defaults: Mapping[str, Any]
    build: Callable[[dict[str, Any], Schedule, str], Sampler]
    validate: Callable[[dict[str, Any], Schedule], None] | None = None


def prior_sample(schedule: Schedule, key: Array, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """``(x, key_run)``: a draw ``x: shape`` from the prior ``sigma(t_0) N(0, I)`` and the key left for the loop."""
    key_init, key_run = jax.random.split(key)
    t0 = schedule.timesteps(1)[0]
    return schedule.marginal(t0)[1] * jax.random.normal(key_init, shape), key_run


def _check_positive_ints(s: dict[str, Any], *fields: str) -> None:
    for field in fields:
        check_positive_int(f"sampler.{field}", s[field])


def _check_positive(s: dict[str, Any], *fields: str) -> None:
    for field in fields:
        check_positive(f"sampler.{field}", s[field])


# --- langevin ---------------------------------------------------------------------------------------------------


def _validate_langevin(s: dict[str, Any], schedule: Schedule) -> None:
    _check_positive_ints(s, "n_steps")
    _check_positive(s, "step_size")


def _build_langevin(s: dict[str, Any], schedule: Schedule, parameterization: str) -> Sampler:
    def sample(net: Net, key: Array, shape: tuple[int, ...]) -> Array:
        x, key_run = prior_sample(schedule, key, shape)
        grid = schedule.timesteps(s["n_steps"])
        t_last = jnp.where(grid[-1] > 0, grid[-1], grid[-2])  # lowest noise level with a finite score
        score_t = as_parameterization(net, schedule, parameterization, "score")
        score = lambda x, _sigma: score_t(x, jnp.full(x.shape[:1], t_last))  # noqa: E731
        return langevin(score, x, s["n_steps"], s["step_size"], key_run)

    return sample


# --- annealed_langevin ------------------------------------------------------------------------------------------


def _ladder_bounds(s: dict[str, Any], schedule: Schedule) -> tuple[Any, Any, Any]:
    """``(num_levels, sigma_max, sigma_min)`` from the config, the unset ones from the schedule."""
    if isinstance(schedule, NCSNSchedule):
        defaults = (schedule.num_levels, schedule.sigma_max, schedule.sigma_min)
    else:
        # Just below t_max: the VE level sigma/alpha is infinite at t_max on paths where alpha reaches 0.
        defaults = (10, float(schedule.ve_sigma(schedule.timesteps(1)[0] * 0.999)), 0.01)
    return s["num_levels"] or defaults[0], s["sigma_max"] or defaults[1], s["sigma_min"] or defaults[2]


def _validate_annealed_langevin(s: dict[str, Any], schedule: Schedule) -> None:
    _check_positive_ints(s, "n_steps_each")
    _check_positive(s, "step_size")
    levels, hi, lo = _ladder_bounds(s, schedule)
    check_positive_int("sampler.num_levels", levels)
    check_positive("sampler.sigma_min", lo)
    check_less("sampler.sigma_min", lo, "sampler.sigma_max", hi)


def _build_annealed_langevin(s: dict[str, Any], schedule: Schedule, parameterization: str) -> Sampler:
    levels, hi, lo = _ladder_bounds(s, schedule)
    sigmas = jnp.exp(jnp.linspace(math.log(hi), math.log(lo), levels))

    def sample(net: Net, key: Array, shape: tuple[int, ...]) -> Array:
        # The ladder, not the schedule, sets the starting level, so the prior is drawn at sigmas[0].
        key_init, key_run = jax.random.split(key)
        z = jax.random.normal(key_init, shape)
        score = ve_score_fn(net, schedule, parameterization)
        return annealed_langevin(score, sigmas[0] * z, sigmas, s["n_steps_each"], s["step_size"], key_run,
                                 denoise=s["denoise"])

    return sample


# --- pc -----------------------------------------------------------------------------------------------------------


def _validate_pc(s: dict[str, Any], schedule: Schedule) -> None:
    _check_positive_ints(s, "n_steps", "n_corrector")
    _check_positive(s, "snr")


def _build_pc(s: dict[str, Any], schedule: Schedule, parameterization: str) -> Sampler:
    def sample(net: Net, key: Array, shape: tuple[int, ...]) -> Array:
        x, key_run = prior_sample(schedule, key, shape)
        return predictor_corrector(net, schedule, parameterization, x, key_run, s["n_steps"], s["snr"],
                                   s["n_corrector"], s["denoise"])

    return sample


# --- ode / flow_euler ---------------------------------------------------------------------------------------------


def _validate_ode(s: dict[str, Any], schedule: Schedule) -> None:
    _check_positive_ints(s, "n_steps")
    check_choice("sampler.method", s["method"], ("euler", "heun"))


def _build_ode(s: dict[str, Any], schedule: Schedule, parameterization: str) -> Sampler:
    def sample(net: Net, key: Array, shape: tuple[int, ...]) -> Array:
        x, _ = prior_sample(schedule, key, shape)
        return probability_flow(net, schedule, parameterization, x, s["n_steps"], s["method"])

    return sample


def _validate_flow_euler(s: dict[str, Any], schedule: Schedule) -> None:
    _check_positive_ints(s, "n_steps")
    if not isinstance(schedule, RectifiedFlowSchedule):
        raise ConfigError(f"sampler.name='flow_euler' needs schedule.name='rectified_flow', got {type(schedule).__name__}")


def _build_flow_euler(s: dict[str, Any], schedule: Schedule, parameterization: str) -> Sampler:
    # On the rectified-flow path the probability-flow Euler step is SD3's flow-matching Euler step.
    return _build_ode({**s, "method": "euler"}, schedule, parameterization)


SAMPLERS: dict[str, SamplerSpec] = {
    "langevin": SamplerSpec({"n_steps": 1000, "step_size": 1e-4}, _build_langevin, _validate_langevin),
    "annealed_langevin": SamplerSpec(
        {"n_steps_each": 100, "step_size": 2e-5, "num_levels": None, "sigma_max": None, "sigma_min": None,
         "denoise": True},
        _build_annealed_langevin, _validate_annealed_langevin),
    "pc": SamplerSpec({"n_steps": 1000, "snr": 0.16, "n_corrector": 1, "denoise": True}, _build_pc, _validate_pc),
    "ode": SamplerSpec({"n_steps": 100, "method": "heun"}, _build_ode, _validate_ode),
    "flow_euler": SamplerSpec({"n_steps": 28}, _build_flow_euler, _validate_flow_euler),
    "flow_match_euler": SamplerSpec(dict(FLOW_MATCH_EULER_DEFAULTS), build_flow_match_euler, validate_flow_match_euler),
}


def register_sampler(name: str, spec: SamplerSpec) -> None:
    """Add ``spec`` to ``SAMPLERS`` as ``sampler.name=name``; a name already taken raises ``ConfigError``."""
    if not isinstance(spec, SamplerSpec):
        raise TypeError(f"register_sampler({name!r}, ...) needs a SamplerSpec, got {type(spec).__name__}")
    if name in SAMPLERS:
        raise ConfigError(f"sampler.name={name!r} is already registered; registered names are {sorted(SAMPLERS)}")
    if "name" in spec.defaults:
        raise ConfigError(f"sampler {name!r}: 'name' selects the sampler and cannot be one of its config fields")
    SAMPLERS[name] = spec


def _settings(config: Any) -> tuple[str, dict[str, Any]]:
    cfg = dict(config)
    name = cfg.pop("name", None)
    check_choice("sampler.name", name, SAMPLERS)
    defaults = SAMPLERS[name].defaults
    check_keys(f"sampler ({name})", cfg, defaults)
    return name, {**defaults, **cfg}


def make_sampler(config: Any, schedule: Schedule, parameterization: str) -> Sampler:
    """Validate a sampler config and return ``sample(net, key, shape) -> x: shape``.

    ``config`` is a mapping with ``name`` (a key of ``SAMPLERS``) and any of that sampler's fields.
    ``net(x, t)`` outputs ``parameterization``; sampling starts from the prior ``sigma(t_0) N(0, I)``.
    """
    name, s = _settings(config)
    check_choice("model.parameterization", parameterization, PARAMETERIZATIONS)
    spec = SAMPLERS[name]
    if spec.validate is not None:
        spec.validate(s, schedule)
    return spec.build(s, schedule, parameterization)
