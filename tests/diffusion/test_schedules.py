"""Schedules against published test values (docs/score_matching.md §1) and diffusers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.diffusion.schedules import (
    EDMSchedule, NCSNSchedule, RectifiedFlowSchedule, VESchedule, VPSchedule, get_schedule,
)
from mmdit_jax.checks import ConfigError


def test_vp_marginals_match_score_sde_values():
    s = VPSchedule()
    alpha, sigma = s.marginal(jnp.array([1.0, 0.5, 1e-3]))
    np.testing.assert_allclose(alpha[:2], [0.0065716, 0.281183], rtol=1e-5)
    np.testing.assert_allclose(sigma, [0.999978, 0.959654, 0.0104854], rtol=1e-5)


def test_vp_sde_coefficients_are_minus_half_beta_and_beta():
    s = VPSchedule()
    t = jnp.array([0.1, 0.5, 0.9])
    f, g2 = s.sde(t)
    beta = 0.1 + t * (20.0 - 0.1)
    np.testing.assert_allclose(f, -0.5 * beta, rtol=1e-5)
    np.testing.assert_allclose(g2, beta, rtol=1e-4)


def test_ve_marginal_and_diffusion():
    s = VESchedule(sigma_min=0.01, sigma_max=50.0)
    np.testing.assert_allclose(s.marginal(0.5)[1], 0.70711, rtol=1e-5)
    _, g2 = s.sde(jnp.array(1.0))
    np.testing.assert_allclose(jnp.sqrt(g2), 206.364, rtol=1e-5)


def test_ncsn_levels_are_geometric_and_lie_on_the_ve_path():
    s = NCSNSchedule(sigma_min=0.01, sigma_max=1.0, num_levels=10)
    sig = np.asarray(s.sigmas)
    np.testing.assert_allclose(sig[[0, -1]], [1.0, 0.01], rtol=1e-6)
    np.testing.assert_allclose(sig[:-1] / sig[1:], 100 ** (1 / 9), rtol=1e-5)
    np.testing.assert_allclose(s.marginal(s.level_times)[1], sig, rtol=1e-5)
    drawn = s.sample_t(jax.random.PRNGKey(0), 4096)
    assert set(np.round(np.asarray(drawn), 5)) == set(np.round(np.asarray(s.level_times), 5))


def test_edm_sigmas_match_the_published_test_vector():
    expected = [80, 57.586, 40.7856, 28.3746, 19.3525, 12.9101, 8.4009, 5.3152, 3.2568, 1.9233,
                1.0882, 0.5853, 0.2964, 0.1395, 0.0599, 0.0229, 0.0075, 0.002, 0.0]
    got = np.asarray(EDMSchedule().timesteps(18))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=5.1e-5)  # published to 4 decimals
    s = EDMSchedule()
    np.testing.assert_allclose(s.loss_weight(jnp.array([1.0, 0.5])), [5.0, 8.0], rtol=1e-6)


def test_edm_training_levels_are_log_normal():
    ln_sigma = np.log(np.asarray(EDMSchedule().sample_t(jax.random.PRNGKey(1), 200_000)))
    assert abs(ln_sigma.mean() + 1.2) < 0.01 and abs(ln_sigma.std() - 1.2) < 0.01


def test_rectified_flow_logit_normal_training_times():
    t = np.asarray(RectifiedFlowSchedule(logit_mean=0.5, logit_std=0.8).sample_t(jax.random.PRNGKey(2), 200_000))
    u = np.log(t / (1 - t))
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 0.8) < 0.01
    shifted = RectifiedFlowSchedule(shift=3.0).sample_t(jax.random.PRNGKey(2), 200_000)
    assert float(jnp.median(shifted)) == pytest.approx(0.75, abs=0.01)  # shift(0.5) = 1.5 / 2


def test_flow_timesteps_equal_diffusers_flow_match_euler_scheduler():
    diffusers = pytest.importorskip("diffusers")
    for n, shift in [(28, 3.0), (50, 1.0), (4, 3.0)]:
        ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        ref.set_timesteps(n)
        ours = RectifiedFlowSchedule(shift=shift).timesteps(n)
        np.testing.assert_allclose(np.asarray(ours), ref.sigmas.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(1000 * np.asarray(ours[:-1]), ref.timesteps.numpy(), rtol=2e-6)
    ours = 1000 * np.asarray(RectifiedFlowSchedule(shift=3.0).timesteps(28))
    np.testing.assert_allclose(ours[[0, 1, -2]], [1000.0, 987.38, 8.93], atol=0.01)


@pytest.mark.parametrize("schedule", [VESchedule(), NCSNSchedule(), VPSchedule(), EDMSchedule(),
                                      RectifiedFlowSchedule(shift=3.0)])
def test_ve_sigma_inversion(schedule):
    t = jnp.linspace(0.05, 0.95, 7) * schedule.t_max
    np.testing.assert_allclose(schedule.t_from_ve_sigma(schedule.ve_sigma(t)), t, rtol=2e-4, atol=1e-6)
    ts = np.asarray(schedule.timesteps(10))
    assert ts.shape == (11,) and np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("config, field", [
    ({"name": "cosine"}, "schedule.name"),
    ({"name": "ncsn", "sigma_min": 1.0, "sigma_max": 0.5}, "schedule.sigma_min"),
    ({"name": "ve", "sigma_min": -1.0}, "schedule.sigma_min"),
    ({"name": "ncsn", "num_levels": 0}, "schedule.num_levels"),
    ({"name": "vp", "sigma_max": 3.0}, "unknown keys ['sigma_max']"),
    ({"name": "rectified_flow", "t_sampling": "mode"}, "schedule.t_sampling"),
    ({"name": "rectified_flow", "shift": 0.0}, "schedule.shift"),
])
def test_bad_schedule_config_names_the_field(config, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        get_schedule(config)


def test_get_schedule_builds_each_name():
    s = get_schedule({"name": "ncsn", "sigma_min": 0.001, "sigma_max": 1.0, "num_levels": 10})
    assert isinstance(s, NCSNSchedule) and s.num_levels == 10
    assert isinstance(get_schedule({"name": "rectified_flow", "shift": 3.0}), RectifiedFlowSchedule)
