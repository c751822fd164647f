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
=================  ============================================================  =====================

The returned ``sample(net, key, shape)`` is a pure function; wrap it in ``jax.jit`` (with ``net`` closed over
the parameters) and the whole loop is one XLA program.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.parameterization import PARAMETERIZATIONS, Net, as_parameterization, ve_score_fn
from mmdit_jax.diffusion.samplers.langevin import annealed_langevin, langevin
from mmdit_jax.diffusion.samplers.ode import probability_flow
from mmdit_jax.diffusion.samplers.sde import predictor_corrector
from mmdit_jax.diffusion.schedules import NCSNSchedule, RectifiedFlowSchedule, Schedule
from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_less, check_positive, check_positive_int

__all__ = ["SAMPLERS", "make_sampler", "langevin", "annealed_langevin", "predictor_corrector", "probability_flow"]

Array = jax.Array
Sampler = Callable[[Net, Array, tuple[int, ...]], Array]

# name -> (allowed fields with defaults). None = "take from the schedule".
SAMPLERS: dict[str, dict[str, Any]] = {
    "langevin": {"n_steps": 1000, "step_size": 1e-4},
    "annealed_langevin": {
        "n_steps_each": 100, "step_size": 2e-5, "num_levels": None, "sigma_max": None, "sigma_min": None,
        "denoise": True,
    },
    "pc": {"n_steps": 1000, "snr": 0.16, "n_corrector": 1, "denoise": True},
    "ode": {"n_steps": 100, "method": "heun"},
    "flow_euler": {"n_steps": 28},
}


def _settings(config: Any) -> tuple[str, dict[str, Any]]:
    cfg = dict(config)
    name = cfg.pop("name", None)
    check_choice("sampler.name", name, SAMPLERS)
    check_keys(f"sampler ({name})", cfg, SAMPLERS[name])
    return name, {**SAMPLERS[name], **cfg}


def _ladder(s: dict[str, Any], schedule: Schedule) -> Array:
    if isinstance(schedule, NCSNSchedule):
        defaults = (schedule.num_levels, schedule.sigma_max, schedule.sigma_min)
    else:
        defaults = (10, float(schedule.ve_sigma(schedule.timesteps(1)[0] * 0.999)), 0.01)
    levels = s["num_levels"] or defaults[0]
    hi, lo = s["sigma_max"] or defaults[1], s["sigma_min"] or defaults[2]
    check_positive_int("sampler.num_levels", levels)
    check_positive("sampler.sigma_min", lo)
    check_less("sampler.sigma_min", lo, "sampler.sigma_max", hi)
    return jnp.exp(jnp.linspace(math.log(hi), math.log(lo), levels))


def make_sampler(config: Any, schedule: Schedule, parameterization: str) -> Sampler:
    """Validate a sampler config and return ``sample(net, key, shape) -> x: shape``.

    ``net(x, t)`` outputs ``parameterization``; sampling starts from the prior ``sigma(t_0) N(0, I)``.
    """
    name, s = _settings(config)
    check_choice("model.parameterization", parameterization, PARAMETERIZATIONS)
    for field in ("n_steps", "n_steps_each", "n_corrector"):
        if field in s:
            check_positive_int(f"sampler.{field}", s[field])
    for field in ("step_size", "snr"):
        if field in s:
            check_positive(f"sampler.{field}", s[field])
    if name == "ode":
        check_choice("sampler.method", s["method"], ("euler", "heun"))
    if name == "flow_euler" and not isinstance(schedule, RectifiedFlowSchedule):
        raise ConfigError(f"sampler.name='flow_euler' needs schedule.name='rectified_flow', got {type(schedule).__name__}")
    sigmas = _ladder(s, schedule) if name == "annealed_langevin" else None

    def sample(net: Net, key: Array, shape: tuple[int, ...]) -> Array:
        key_init, key_run = jax.random.split(key)
        z = jax.random.normal(key_init, shape)
        if name == "annealed_langevin":
            score = ve_score_fn(net, schedule, parameterization)
            return annealed_langevin(score, sigmas[0] * z, sigmas, s["n_steps_each"], s["step_size"], key_run,
                                     denoise=s["denoise"])
        t0 = schedule.timesteps(1)[0]
        x = schedule.marginal(t0)[1] * z
        if name == "langevin":
            grid = schedule.timesteps(s["n_steps"])
            t_last = jnp.where(grid[-1] > 0, grid[-1], grid[-2])  # lowest noise level with a finite score
            score_t = as_parameterization(net, schedule, parameterization, "score")
            score = lambda x, _sigma: score_t(x, jnp.full(x.shape[:1], t_last))  # noqa: E731
            return langevin(score, x, s["n_steps"], s["step_size"], key_run)
        if name == "pc":
            return predictor_corrector(net, schedule, parameterization, x, key_run, s["n_steps"], s["snr"],
                                       s["n_corrector"], s["denoise"])
        method = "euler" if name == "flow_euler" else s["method"]
        return probability_flow(net, schedule, parameterization, x, s["n_steps"], method)

    return sample
