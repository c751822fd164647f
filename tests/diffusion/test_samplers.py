"""Samplers against closed forms, the NCSN 2D result and diffusers' flow-matching scheduler (docs/score_matching.md
§4-§6, §8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.data.toy2d import NCSN_MIXTURE
from mmdit_jax.diffusion.guidance import classifier_free_guidance
from mmdit_jax.diffusion.parameterization import convert, from_x0_eps
from mmdit_jax.diffusion.samplers import annealed_langevin, langevin, make_sampler, probability_flow
from mmdit_jax.diffusion.schedules import EDMSchedule, NCSNSchedule, RectifiedFlowSchedule, VESchedule, VPSchedule, bcast
from mmdit_jax.checks import ConfigError
from tests.oracles import gaussian_posterior

MU, S = 1.0, 0.5


def gaussian_net(schedule, kind):
    def net(x, t):
        alpha, sigma = (bcast(c, x) for c in schedule.marginal(t))
        _, x0, eps = gaussian_posterior(x, MU, S, alpha, sigma)
        return from_x0_eps(x0, eps, x, t, schedule, kind)

    return net


@pytest.mark.parametrize("a_over_s2", [0.1, 0.2])
def test_langevin_stationary_variance_has_the_ula_bias(a_over_s2):
    s = 0.7
    x = jnp.zeros((200_000, 1))
    out = jax.jit(lambda k: langevin(lambda x, _: -x / s**2, x, 300, a_over_s2 * s**2, k))(jax.random.PRNGKey(0))
    expected = s**2 / (1 - a_over_s2 / 2)       # s^2 / (1 - a / (2 s^2)), convention B
    assert float(jnp.var(out)) == pytest.approx(expected, rel=0.01)


def _ncsn_2d(key, sampler):
    k0, k1 = jax.random.split(key)
    x = jax.random.uniform(k0, (1280, 2), minval=-8.0, maxval=8.0)
    return NCSN_MIXTURE.mode_weights(sampler(x, k1))[0]


def test_ncsn_2d_plain_langevin_misses_and_annealed_langevin_recovers_mode_weights():
    """Paper settings in convention A (eps = 0.1) are step_size = 0.05 here; 5 seeds averaged."""
    sigmas = jnp.exp(jnp.linspace(jnp.log(20.0), 0.0, 10))
    plain = jax.jit(lambda key: _ncsn_2d(key, lambda x, k: langevin(
        lambda x, _: NCSN_MIXTURE.score(x), x, 1000, 0.05, k)))
    annealed = jax.jit(lambda key: _ncsn_2d(key, lambda x, k: annealed_langevin(
        NCSN_MIXTURE.ncsn_repo_score, x, sigmas, 100, 0.05, k)))
    keys = [jax.random.PRNGKey(s) for s in range(5)]
    w_plain = np.mean([float(plain(k)) for k in keys])
    w_annealed = np.mean([float(annealed(k)) for k in keys])
    assert w_plain == pytest.approx(0.51, abs=0.03)
    assert w_annealed == pytest.approx(0.78, abs=0.03)


def test_annealed_langevin_runs_on_a_rectified_flow_velocity_model():
    sched = RectifiedFlowSchedule(shift=3.0)
    sample = make_sampler({"name": "annealed_langevin", "n_steps_each": 50, "step_size": 1e-4,
                           "num_levels": 12, "sigma_max": 20.0, "sigma_min": 0.01}, sched, "velocity")
    x = jax.jit(lambda k: sample(gaussian_net(sched, "velocity"), k, (20_000, 2)))(jax.random.PRNGKey(1))
    assert float(x.mean()) == pytest.approx(MU, abs=0.02)
    assert float(x.std()) == pytest.approx(S, rel=0.03)


@pytest.mark.parametrize("schedule, kind, config", [
    (VESchedule(sigma_max=20.0), "score", {"name": "pc", "n_steps": 300, "snr": 0.16}),
    (VPSchedule(), "eps", {"name": "pc", "n_steps": 300, "snr": 0.05}),
    (VESchedule(sigma_max=20.0), "score", {"name": "ode", "n_steps": 100, "method": "heun"}),
    (VPSchedule(), "eps", {"name": "ode", "n_steps": 200, "method": "euler"}),
    (EDMSchedule(), "x0", {"name": "ode", "n_steps": 64, "method": "heun"}),
    (RectifiedFlowSchedule(shift=3.0), "velocity", {"name": "flow_euler", "n_steps": 300}),
    (RectifiedFlowSchedule(shift=3.0), "velocity", {"name": "ode", "n_steps": 28, "method": "heun"}),
], ids=lambda v: v["name"] + "-" + v.get("method", "") if isinstance(v, dict) else str(type(v).__name__))
def test_samplers_reproduce_gaussian_data_with_the_exact_model(schedule, kind, config):
    sample = make_sampler(config, schedule, kind)
    x = jax.jit(lambda k: sample(gaussian_net(schedule, kind), k, (20_000, 2)))(jax.random.PRNGKey(2))
    assert float(x.mean()) == pytest.approx(MU, abs=0.03)
    assert float(x.std()) == pytest.approx(S, rel=0.04)


def test_ve_probability_flow_matches_the_analytic_transport():
    """VE ODE on N(0, s^2): x(t) = x(0) sqrt((s^2 + sigma(t)^2)/(s^2 + sigma(0)^2)) (docs/score_matching.md §8)."""
    sched = VESchedule(sigma_min=0.01, sigma_max=10.0)
    x_T = 10.0 * jax.random.normal(jax.random.PRNGKey(3), (64, 3))
    net = lambda x, t: -x / (S**2 + bcast(sched.marginal(t)[1], x) ** 2)  # noqa: E731  score of N(0, s^2)
    out = jax.jit(lambda x: probability_flow(net, sched, "score", x, 200, "heun"))(x_T)
    ts = sched.timesteps(200)
    ratio = np.sqrt((S**2 + float(sched.marginal(ts[-1])[1]) ** 2) / (S**2 + 10.0**2))
    np.testing.assert_allclose(out, x_T * ratio, rtol=1e-3, atol=1e-5)


def test_flow_euler_steps_equal_diffusers_scheduler_steps():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    sched = RectifiedFlowSchedule(shift=3.0)

    def net(x, t):  # any smooth velocity field of (x, t)
        return jnp.sin(x) * (1.0 + bcast(t, x)) - 0.3 * x

    x = jax.random.normal(jax.random.PRNGKey(4), (3, 5))
    ours = probability_flow(net, sched, "velocity", x, 28, "euler")
    ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    ref.set_timesteps(28)
    xt = torch.tensor(np.asarray(x))
    for timestep in ref.timesteps:
        v = torch.tensor(np.asarray(net(jnp.asarray(xt.numpy()), jnp.full((3,), float(timestep) / 1000))))
        xt = ref.step(v, timestep, xt).prev_sample
    np.testing.assert_allclose(ours, xt.numpy(), rtol=1e-5, atol=1e-5)


def test_classifier_free_guidance_combines_branches_and_commutes_with_conversion():
    sched = RectifiedFlowSchedule()

    def model_fn(params, x, t, cond):
        return params * x + cond[:, None]

    x, t = jnp.ones((4, 3)), jnp.full((4,), 0.4)
    cond, uncond = jnp.full((4,), 2.0), jnp.zeros((4,))
    for w in (0.0, 1.0, 4.0):
        guided = classifier_free_guidance(model_fn, w)(0.5, x, t, (cond, uncond))
        np.testing.assert_allclose(guided, 0.5 * x + w * 2.0)
    guided = classifier_free_guidance(model_fn, 3.0)(0.5, x, t, (cond, uncond))
    per_branch = [convert(model_fn(0.5, x, t, c), x, t, sched, "velocity", "score") for c in (uncond, cond)]
    np.testing.assert_allclose(convert(guided, x, t, sched, "velocity", "score"),
                               per_branch[0] + 3.0 * (per_branch[1] - per_branch[0]), rtol=1e-5)


def _n_eqns(fn, *args):
    return len(jax.make_jaxpr(fn)(*args).jaxpr.eqns)


@pytest.mark.parametrize("name", ["annealed_langevin", "pc", "ode", "flow_euler", "langevin"])
def test_each_sampler_is_one_program_whose_size_does_not_grow_with_steps(name):
    sched = RectifiedFlowSchedule() if name == "flow_euler" else NCSNSchedule()
    steps_field = {"annealed_langevin": "n_steps_each"}.get(name, "n_steps")
    net = lambda x, t: -x  # noqa: E731

    def program(n):
        sample = make_sampler({"name": name, steps_field: n}, sched, "eps")
        return lambda k: sample(net, k, (4, 2))

    key = jax.random.PRNGKey(0)
    assert _n_eqns(program(3), key) == _n_eqns(program(300), key)


@pytest.mark.parametrize("name", ["annealed_langevin", "pc", "ode", "flow_euler", "langevin"])
def test_a_bfloat16_network_keeps_the_sampler_state_in_float32(name):
    # A bf16 MMDiT returns bf16; a sampler whose loop carried the network output would fail to trace (carry dtype
    # mismatch) or drift in bf16. The state must stay float32 and finite.
    sched = RectifiedFlowSchedule() if name == "flow_euler" else NCSNSchedule()
    steps_field = {"annealed_langevin": "n_steps_each"}.get(name, "n_steps")
    sample = make_sampler({"name": name, steps_field: 3}, sched, "velocity" if name == "flow_euler" else "eps")
    out = jax.jit(lambda k: sample(lambda x, t: (-x).astype(jnp.bfloat16), k, (4, 2)))(jax.random.PRNGKey(0))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("config, match", [
    ({"name": "ddim"}, "sampler.name='ddim'"),
    ({"name": "langevin", "step_size": 0.0}, "sampler.step_size"),
    ({"name": "annealed_langevin", "step_size": -1e-3}, "sampler.step_size"),
    ({"name": "pc", "n_steps": 0}, "sampler.n_steps"),
    ({"name": "ode", "method": "rk4"}, "sampler.method"),
    ({"name": "ode", "snr": 0.1}, r"unknown keys \['snr'\]"),
    ({"name": "flow_euler"}, "needs schedule.name='rectified_flow'"),
    ({"name": "annealed_langevin", "sigma_min": 2.0, "sigma_max": 1.0}, "sampler.sigma_min"),
])
def test_bad_sampler_config_names_the_field(config, match):
    with pytest.raises(ConfigError, match=match):
        make_sampler(config, VESchedule(), "score")


def test_langevin_arguments_are_checked():
    x = jnp.zeros((4, 2))
    with pytest.raises(ConfigError, match="step_size"):
        langevin(lambda x, s: -x, x, 10, -0.1, jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match=r"returned shape \(4, 1\), expected x.shape \(4, 2\)"):
        annealed_langevin(lambda x, s: x[:, :1], x, jnp.array([1.0, 0.1]), 10, 0.1, jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="n_steps_each"):
        annealed_langevin(lambda x, s: -x, x, jnp.array([1.0, 0.1]), 0, 0.1, jax.random.PRNGKey(0))
