"""Losses against closed-form minima on Gaussian data, and training to the analytic score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.diffusion.losses import denoising_loss, make_loss_fn, noise_conditional_ssm, sliced_score_matching
from mmdit_jax.diffusion.parameterization import from_x0_eps
from mmdit_jax.diffusion.schedules import (
    EDMSchedule, NCSNSchedule, RectifiedFlowSchedule, VESchedule, VPSchedule, bcast,
)
from mmdit_jax.families.mlp import mlp_net
from mmdit_jax.models.mlp import NoiseConditionalMLP
from mmdit_jax.train.fit import fit
from mmdit_jax.checks import ConfigError
from tests.oracles import gaussian_posterior

MU, S, D, N = 0.5, 1.5, 4, 200_000


def exact_net(schedule, kind, scale=1.0):
    """The Bayes-optimal model of N(MU, S^2 I) data on ``schedule``, outputting ``kind`` (optionally mis-scaled)."""

    def net(x, t):
        alpha, sigma = (bcast(c, x) for c in schedule.marginal(t))
        _, x0, eps = gaussian_posterior(x, MU, S, alpha, sigma)
        return scale * from_x0_eps(x0, eps, x, t, schedule, kind)

    return net


def _data(key=0):
    return MU + S * jax.random.normal(jax.random.PRNGKey(key), (N, D))


@pytest.mark.parametrize("schedule, t", [(VESchedule(), 0.3), (VESchedule(), 0.8), (VPSchedule(), 0.5),
                                         (RectifiedFlowSchedule(), 0.6)], ids=str)
def test_dsm_minimum_is_half_d_s2_over_s2_plus_sigma2(schedule, t):
    x0, tt = _data(), jnp.full((N,), t)
    sigma_ve = float(schedule.ve_sigma(jnp.array(t)))
    floor = 0.5 * D * S**2 / (S**2 + sigma_ve**2)
    loss, _ = denoising_loss(exact_net(schedule, "score"), x0, jax.random.PRNGKey(1), schedule, "score", "dsm", t=tt)
    assert float(loss.mean()) == pytest.approx(floor, rel=0.01)
    # Vincent (2011): a model off by a factor c pays exactly 1/2 sigma^2 (c - 1)^2 E||score||^2 more.
    worse, _ = denoising_loss(exact_net(schedule, "score", 1.5), x0, jax.random.PRNGKey(1), schedule, "score", "dsm", t=tt)
    excess = 0.5 * sigma_ve**2 * 0.25 * D / (S**2 + sigma_ve**2)
    assert float(worse.mean() - loss.mean()) == pytest.approx(excess, rel=0.03)


def test_eps_velocity_and_edm_losses_reach_their_posterior_variance():
    x0, key = _data(2), jax.random.PRNGKey(3)
    vp, t = VPSchedule(), 0.4
    a, s = (float(c) for c in vp.marginal(jnp.array(t)))
    loss, _ = denoising_loss(exact_net(vp, "eps"), x0, key, vp, "eps", "eps", t=jnp.full((N,), t))
    assert float(loss.mean()) == pytest.approx(a**2 * S**2 / (a**2 * S**2 + s**2), rel=0.01)

    rf, t = RectifiedFlowSchedule(), 0.35
    loss, _ = denoising_loss(exact_net(rf, "velocity"), x0, key, rf, "velocity", "velocity", t=jnp.full((N,), t))
    assert float(loss.mean()) == pytest.approx(S**2 / ((1 - t) ** 2 * S**2 + t**2), rel=0.01)
    # an eps-parameterised model trained with the velocity loss: same optimum through the conversion layer
    loss_eps, _ = denoising_loss(exact_net(rf, "eps"), x0, key, rf, "eps", "velocity", t=jnp.full((N,), t))
    np.testing.assert_allclose(loss_eps, loss, rtol=1e-3, atol=1e-5)

    edm, sigma = EDMSchedule(), 0.8
    loss, _ = denoising_loss(exact_net(edm, "x0"), x0, key, edm, "x0", "edm", t=jnp.full((N,), sigma))
    expected = float(edm.loss_weight(jnp.array(sigma))) * S**2 * sigma**2 / (S**2 + sigma**2)
    assert float(loss.mean()) == pytest.approx(expected, rel=0.01)


def test_sliced_score_matching_equals_the_implicit_score_matching_objective():
    """Model -x/v on N(0, s^2 I): J(v) = -D/v + D s^2 / (2 v^2)."""
    x = S * jax.random.normal(jax.random.PRNGKey(4), (N, D))
    for v in (1.0, S**2, 4.0):
        j = sliced_score_matching(lambda y: -y / v, x, jax.random.PRNGKey(5), n_particles=2)
        assert float(j.mean()) == pytest.approx(-D / v + D * S**2 / (2 * v**2), abs=0.02)


def _fit_gaussian_model(loss_name, schedule, key):
    def net_of(p):
        return lambda x, t: -(x - p["m"]) / jnp.exp(p["log_v"])

    loss_fn = make_loss_fn(loss_name, schedule, "score")
    params, _ = fit(lambda p, x, k: jnp.mean(loss_fn(net_of(p), x, k)[0]),
                    {"m": jnp.zeros(()), "log_v": jnp.zeros(())},
                    lambda k, b: MU + S * jax.random.normal(k, (b, D)), key, n_steps=3000,
                    learning_rate=1e-2, batch_size=512)
    return float(params["m"]), float(jnp.exp(params["log_v"]))


def test_sliced_and_denoising_score_matching_agree_at_the_optimum():
    sigma = 0.8
    sched = NCSNSchedule(sigma_min=0.1, sigma_max=sigma, num_levels=1)
    m_dsm, v_dsm = _fit_gaussian_model("dsm", sched, jax.random.PRNGKey(6))
    m_ssm, v_ssm = _fit_gaussian_model("ssm", sched, jax.random.PRNGKey(7))
    assert v_dsm == pytest.approx(S**2 + sigma**2, rel=0.03)
    assert v_ssm == pytest.approx(S**2 + sigma**2, rel=0.03)
    assert m_dsm == pytest.approx(MU, abs=0.05) and m_ssm == pytest.approx(MU, abs=0.05)


def test_mlp_trained_by_dsm_is_within_a_few_percent_of_the_analytic_score():
    sched = NCSNSchedule(sigma_min=0.5, sigma_max=4.0, num_levels=4)
    module = NoiseConditionalMLP(hidden=64, depth=3)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    loss_fn = make_loss_fn("dsm", sched, "eps")

    def loss(p, x, k):
        return jnp.mean(loss_fn(mlp_net(module, p, sched, sigma_data=S), x, k)[0])

    params, losses = fit(loss, params, lambda k, b: MU + S * jax.random.normal(k, (b, 2)),
                         jax.random.PRNGKey(1), n_steps=6000, learning_rate=2e-3, batch_size=1024, cosine_decay=True)
    assert float(losses[-200:].mean()) < float(losses[:50].mean())
    net = mlp_net(module, params, sched, sigma_data=S)
    for i, sigma in enumerate(np.asarray(sched.sigmas)):
        t = jnp.full((4096,), sched.level_times[i])
        x = MU + jnp.sqrt(S**2 + sigma**2) * jax.random.normal(jax.random.PRNGKey(10 + i), (4096, 2))
        score_hat = -net(x, t) / sigma
        score = -(x - MU) / (S**2 + sigma**2)
        rel = float(jnp.linalg.norm(score_hat - score) / jnp.linalg.norm(score))
        assert rel < 0.05, f"sigma={sigma:.3f}: relative score error {rel:.3f}"


def test_noise_conditional_ssm_and_loss_registry_validate_names():
    with pytest.raises(ConfigError, match="loss.name='l2'"):
        make_loss_fn("l2", VESchedule(), "score")
    with pytest.raises(ConfigError, match="needs schedule.name='edm'"):
        denoising_loss(lambda x, t: x, jnp.ones((2, 2)), jax.random.PRNGKey(0), VESchedule(), "x0", "edm")
    with pytest.raises(ConfigError, match="model output shape"):
        denoising_loss(lambda x, t: x[:, :1], jnp.ones((2, 2)), jax.random.PRNGKey(0), VESchedule(), "eps", "eps")
    loss, t = noise_conditional_ssm(lambda x, t: -x, jnp.ones((8, 2)), jax.random.PRNGKey(0), VESchedule(), "score")
    assert loss.shape == (8,) and t.shape == (8,)
