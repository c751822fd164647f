"""diffusion/flow_match.py against diffusers' FlowMatchEulerDiscreteScheduler: the SD3, SD3.5 and FLUX grids
value for value, and the flow_match_euler sampler against the scheduler's step loop."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.flow_match import (
    SCHEDULER_CONFIGS, calculate_shift, dynamic_mu, flow_match_schedule, flux_sigmas)
from mmdit_jax.diffusion.samplers import make_sampler
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule, VESchedule, bcast
from tests.oracles import gaussian_posterior

MU, S = 1.0, 0.5


def _reference(n: int | None, config: dict[str, Any], **kwargs: Any):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    ref.set_timesteps(n, **kwargs)
    return ref


def _assert_grid_equal(n: int | None, config: dict[str, Any], **kwargs: Any) -> None:
    ref = _reference(n, config, **kwargs)
    sigmas, timesteps = flow_match_schedule(n, config, **kwargs)
    assert sigmas.dtype == timesteps.dtype == np.float32
    # atol 1e-6 on timesteps of order 1000 (float32 spacing 6e-5) asks for the same float32 values.
    np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(timesteps, ref.timesteps.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset, shift", [("sd3", 1.0), ("sd3", 3.0), ("sd35", 3.0)])
def test_sd3_grids_equal_diffusers_set_timesteps(preset, shift):
    config = {**SCHEDULER_CONFIGS[preset], "shift": shift}
    for n in (4, 28, 50):
        _assert_grid_equal(n, config)
    # The shift enters the lowest level twice: shift_{S^2}(1/T) = S^2 / (T + S^2 - 1).
    sigmas, _ = flow_match_schedule(28, config)
    assert sigmas[0] == 1.0 and sigmas[-2] == pytest.approx(shift**2 / (1000 + shift**2 - 1), rel=1e-6)


@pytest.mark.parametrize("height, width", [(1024, 1024), (512, 768)])
def test_flux_dev_grid_with_its_mu_and_custom_sigmas_equals_diffusers(height, width):
    config = dict(SCHEDULER_CONFIGS["flux_dev"])
    seq_len = (height // 16) * (width // 16)  # VAE factor 8, then 2x2 packing
    mu = dynamic_mu(config, seq_len)
    assert mu == calculate_shift(seq_len) == pytest.approx(0.5 + 0.65 * (seq_len - 256) / 3840)
    for n in (4, 28, 50):
        _assert_grid_equal(None, config, sigmas=flux_sigmas(n), mu=mu)
        sigmas, _ = flow_match_schedule(n, config, sigmas=flux_sigmas(n), mu=mu)
        u = np.linspace(1.0, 1.0 / n, n)  # the exponential time shift is shift_S with S = e^mu
        np.testing.assert_allclose(sigmas[:-1], np.exp(mu) * u / (1 + (np.exp(mu) - 1) * u), rtol=1e-6)


@pytest.mark.parametrize("config, kwargs", [
    (SCHEDULER_CONFIGS["flux_schnell"], {}),
    (SCHEDULER_CONFIGS["flux_dev"], {"mu": 0.8}),                       # SD3 pipeline's dynamic path: default grid
    ({**SCHEDULER_CONFIGS["flux_dev"], "time_shift_type": "linear"}, {"mu": 2.5}),
    ({"shift": 3.0, "shift_terminal": 0.05}, {}),
    ({**SCHEDULER_CONFIGS["flux_dev"], "shift_terminal": 0.02}, {"mu": 1.1, "sigmas": flux_sigmas(9)}),
    ({"shift": 3.0, "invert_sigmas": True}, {}),
    ({"shift": 2.5}, {"sigmas": [1.0, 0.7, 0.3, 0.1]}),                 # custom sigmas, static shift (float32)
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0", "shift": 3.0}, {}),
], ids=["schnell", "dynamic-default-grid", "linear", "terminal", "terminal-flux", "invert", "custom", "metadata"])
def test_other_supported_options_equal_diffusers(config, kwargs):
    n = None if "sigmas" in kwargs else 12
    ref_config = {k: v for k, v in config.items() if not k.startswith("_")}
    ref = _reference(n, ref_config, **kwargs)
    sigmas, timesteps = flow_match_schedule(n, config, **kwargs)
    np.testing.assert_allclose(sigmas, ref.sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(timesteps, ref.timesteps.numpy(), rtol=0, atol=1e-6)


def _velocity(x, t):
    """Exact velocity E[eps - x0 | x_t] of data N(MU, S^2) on x_t = (1 - t) x0 + t eps (jnp or NumPy)."""
    t = bcast(t, x) if isinstance(x, jax.Array) else np.reshape(t, (-1,) + (1,) * (x.ndim - 1))
    _, x0, eps = gaussian_posterior(x, MU, S, 1.0 - t, t)
    return eps - x0


@pytest.mark.parametrize("preset, n", [("sd3", 4), ("sd3", 28), ("flux_dev", 4), ("flux_dev", 28)])
def test_flow_match_euler_equals_the_diffusers_step_loop(preset, n):
    torch = pytest.importorskip("torch")
    shape = (2, 8, 12, 3)  # NHWC; FLUX's mu from (8 // 2) * (12 // 2) = 24 tokens
    if preset == "sd3":
        settings, kwargs = {}, {}
    else:
        settings = {"use_dynamic_shifting": True, "sigmas": "flux"}
        kwargs = {"sigmas": flux_sigmas(n), "mu": dynamic_mu(SCHEDULER_CONFIGS[preset], 24)}
    config = dict(SCHEDULER_CONFIGS[preset])
    sample = make_sampler({"name": "flow_match_euler", "n_steps": n, **settings},
                          RectifiedFlowSchedule(shift=config["shift"]), "velocity")
    key = jax.random.PRNGKey(5)
    z = jax.jit(lambda k: sample(lambda x, t: jnp.zeros_like(x), k, shape))(key)  # v = 0 returns the start
    ours = jax.jit(lambda k: sample(_velocity, k, shape))(key)

    ref = _reference(None if kwargs else n, config, **kwargs)
    x = torch.from_numpy(np.array(z))
    for timestep in ref.timesteps:
        v = _velocity(x.numpy(), np.full((shape[0],), timestep.numpy() / 1000, np.float32))  # as the pipelines
        x = ref.step(torch.from_numpy(v.astype(np.float32)), timestep, x).prev_sample
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, x.numpy(), rtol=0, atol=1e-5)
    assert float(jnp.std(z)) == pytest.approx(1.0, abs=0.15)  # the start is plain N(0, I), sigma_0 = 1


def test_static_settings_match_flow_euler_and_a_bfloat16_net_keeps_float32_state():
    sched = RectifiedFlowSchedule(shift=3.0)
    key, shape = jax.random.PRNGKey(6), (16, 2)
    ours = make_sampler({"name": "flow_match_euler", "n_steps": 10}, sched, "velocity")
    theirs = make_sampler({"name": "flow_euler", "n_steps": 10}, sched, "velocity")
    np.testing.assert_allclose(ours(_velocity, key, shape), theirs(_velocity, key, shape), atol=1e-5)
    out = ours(lambda x, t: (-x).astype(jnp.bfloat16), key, shape)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    n_eqns = [len(jax.make_jaxpr(lambda k, n=n: make_sampler(
        {"name": "flow_match_euler", "n_steps": n}, sched, "velocity")(_velocity, k, shape))(key).jaxpr.eqns)
        for n in (3, 300)]
    assert n_eqns[0] == n_eqns[1]


@pytest.mark.parametrize("config, kwargs, match", [
    ({"use_karras_sigmas": True}, {}, "scheduler.use_karras_sigmas=True is not supported"),
    ({"use_beta_sigmas": True}, {}, "scheduler.use_beta_sigmas"),
    ({"stochastic_sampling": True}, {}, "scheduler.stochastic_sampling"),
    ({"time_shift_type": "cosine"}, {}, "scheduler.time_shift_type"),
    ({"shfit": 3.0}, {}, r"unknown keys \['shfit'\]"),
    ({"_class_name": "EulerDiscreteScheduler"}, {}, "scheduler._class_name"),
    ({"use_dynamic_shifting": True}, {}, "mu must be given"),
    ({}, {"sigmas": [1.0, 0.5]}, r"num_inference_steps \(4\) must equal len\(sigmas\) \(2\)"),
])
def test_unsupported_scheduler_options_raise_naming_the_option(config, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        flow_match_schedule(4, config, **kwargs)


@pytest.mark.parametrize("config, schedule, match", [
    ({}, VESchedule(), "needs schedule.name='rectified_flow'"),
    ({"mu": 1.0}, RectifiedFlowSchedule(), r"sampler.mu=1.0 is only used with sampler.use_dynamic_shifting=True"),
    ({"sigmas": "karras"}, RectifiedFlowSchedule(), "sampler.sigmas"),
    ({"shift_terminal": 1.5}, RectifiedFlowSchedule(), "sampler.shift_terminal"),
    ({"use_karras_sigmas": True}, RectifiedFlowSchedule(), r"unknown keys \['use_karras_sigmas'\]"),
])
def test_bad_flow_match_euler_config_names_the_field(config, schedule, match):
    with pytest.raises(ConfigError, match=match):
        make_sampler({"name": "flow_match_euler", **config}, schedule, "velocity")


def test_dynamic_shifting_without_mu_needs_an_image_shape():
    sample = make_sampler({"name": "flow_match_euler", "use_dynamic_shifting": True}, RectifiedFlowSchedule(),
                          "velocity")
    with pytest.raises(ConfigError, match="needs an NHWC sample shape"):
        sample(_velocity, jax.random.PRNGKey(0), (4, 2))
