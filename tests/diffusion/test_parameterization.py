"""The conversion layer against closed-form posteriors (no use of the package's own conversions as oracle)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.diffusion.parameterization import (
    PARAMETERIZATIONS, as_parameterization, convert, from_x0_eps, ve_score_fn,
)
from mmdit_jax.diffusion.schedules import EDMSchedule, RectifiedFlowSchedule, VESchedule, VPSchedule, bcast
from mmdit_jax.checks import ConfigError
from tests.oracles import gaussian_mixture_rf_posterior, gaussian_posterior

SCHEDULES = [VESchedule(), VPSchedule(), EDMSchedule(), RectifiedFlowSchedule(shift=3.0)]
MU, S = 0.7, 1.3


def _setup(schedule, key=0):
    t = jnp.linspace(0.1, 0.9, 8) * schedule.t_max
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(key), (8, 3))
    alpha, sigma = (bcast(c, x) for c in schedule.marginal(t))
    return x, t, alpha, sigma


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_exact_score_converts_to_exact_posterior_means(schedule):
    x, t, alpha, sigma = _setup(schedule)
    score, x0, eps = gaussian_posterior(x, MU, S, alpha, sigma)
    np.testing.assert_allclose(convert(score, x, t, schedule, "score", "x0"), x0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(convert(score, x, t, schedule, "score", "eps"), eps, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(convert(x0, x, t, schedule, "x0", "score"), score, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_every_pair_of_parameterizations_round_trips(schedule):
    x, t, alpha, sigma = _setup(schedule, key=1)
    _, x0, eps = gaussian_posterior(x, MU, S, alpha, sigma)
    for src in PARAMETERIZATIONS:
        out = from_x0_eps(x0, eps, x, t, schedule, src)
        for dst in PARAMETERIZATIONS:
            back = convert(convert(out, x, t, schedule, src, dst), x, t, schedule, dst, src)
            np.testing.assert_allclose(back, out, rtol=2e-4, atol=2e-5, err_msg=f"{src}->{dst}->{src}")


def test_rectified_flow_velocity_identities_to_1e6_on_a_mixture():
    """x0 = x - t v, eps = x + (1-t) v, score = -(x + (1-t) v)/t, with exact mixture posteriors (float64)."""
    with jax.enable_x64(True):
        sched = RectifiedFlowSchedule()
        x = jnp.linspace(-4, 4, 101, dtype=jnp.float64)
        for t in (0.05, 0.3, 0.7, 0.95):
            x0, eps, score = gaussian_mixture_rf_posterior(x, t, [0.3, 0.7], [-2.0, 1.5], 0.4)
            v = eps - x0                                   # SD3's velocity, from the oracle
            tt = jnp.full(x.shape, t, jnp.float64)
            np.testing.assert_allclose(convert(v, x, tt, sched, "velocity", "score"), score, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(convert(v, x, tt, sched, "velocity", "x0"), x - t * v, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(convert(v, x, tt, sched, "velocity", "eps"), x + (1 - t) * v, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(convert(score, x, tt, sched, "score", "velocity"), v, rtol=1e-6, atol=1e-9)


def test_vp_probability_flow_velocity_vanishes_for_standard_normal_data():
    sched = VPSchedule()
    x = jax.random.normal(jax.random.PRNGKey(3), (16, 4))
    t = jnp.linspace(0.01, 1.0, 16)
    v = convert(-x, x, t, sched, "score", "velocity")     # exact score of N(0, I) at every t
    np.testing.assert_allclose(v, 0.0, atol=1e-5)
    f, g2 = sched.sde(t)
    np.testing.assert_allclose(bcast(f, x) * x - 0.5 * bcast(g2, x) * (-x), v, atol=1e-4)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_ve_score_fn_is_the_score_of_data_plus_ve_noise(schedule):
    """Change of variables y = x / alpha: the result must be -(y - mu)/(s^2 + sigma_ve^2) for any path."""

    def net(x, t):  # an exact velocity model of N(MU, S^2 I) on this schedule
        alpha, sigma = (bcast(c, x) for c in schedule.marginal(t))
        _, x0, eps = gaussian_posterior(x, MU, S, alpha, sigma)
        return from_x0_eps(x0, eps, x, t, schedule, "velocity")

    score_fn = ve_score_fn(net, schedule, "velocity")
    y = 3.0 * jax.random.normal(jax.random.PRNGKey(4), (5, 2))
    for sigma_ve in (0.05, 0.5, 2.0):
        np.testing.assert_allclose(score_fn(y, sigma_ve), -(y - MU) / (S**2 + sigma_ve**2), rtol=2e-3, atol=1e-4)


def test_unknown_parameterization_names_the_choices():
    with pytest.raises(ConfigError, match="parameterization='v'.*velocity"):
        as_parameterization(lambda x, t: x, VESchedule(), "v", "score")
