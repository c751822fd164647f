"""The sampler and loss registries: a new entry is usable by name, validates its own options, and names clash."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.checks import ConfigError, check_positive
from mmdit_jax.diffusion import losses, samplers
from mmdit_jax.diffusion.losses import LOSSES, LossSpec, denoising_fn, denoising_loss, make_loss_fn, register_loss
from mmdit_jax.diffusion.parameterization import convert
from mmdit_jax.diffusion.samplers import SAMPLERS, SamplerSpec, make_sampler, prior_sample, register_sampler
from mmdit_jax.diffusion.schedules import EDMSchedule, RectifiedFlowSchedule, VESchedule, VPSchedule

NET = lambda x, t: -x / (1.0 + t[:, None] ** 2)  # noqa: E731


def _validate_identity(s, schedule):
    check_positive("sampler.scale", s["scale"])


def _build_identity(s, schedule, parameterization):
    return lambda net, key, shape: s["scale"] * prior_sample(schedule, key, shape)[0]


def _l1_maths(out, x0, x_t, eps, t, schedule, parameterization):
    eps_hat = convert(out, x_t, t, schedule, parameterization, "eps")
    return jnp.mean(jnp.abs(eps_hat - eps).reshape(x0.shape[0], -1), axis=-1)


def _l1_validate(schedule):
    if isinstance(schedule, EDMSchedule):
        raise ConfigError("loss.name='l1' does not support schedule.name='edm'; use 've', 'vp' or 'rectified_flow'")


@pytest.fixture
def identity_sampler():
    register_sampler("identity", SamplerSpec({"scale": 1.0}, _build_identity, _validate_identity))
    try:
        yield "identity"
    finally:
        SAMPLERS.pop("identity", None)


@pytest.fixture
def l1_loss():
    register_loss("l1", LossSpec(denoising_fn(_l1_maths), validate=_l1_validate))
    try:
        yield "l1"
    finally:
        LOSSES.pop("l1", None)


def test_a_registered_sampler_is_built_by_name_and_validates_its_own_fields(identity_sampler):
    sched = VESchedule(sigma_max=5.0)
    key = jax.random.PRNGKey(0)
    x = make_sampler({"name": identity_sampler}, sched, "score")(NET, key, (4, 3))
    key_init, _ = jax.random.split(key)
    np.testing.assert_array_equal(x, sched.marginal(sched.timesteps(1)[0])[1] * jax.random.normal(key_init, (4, 3)))
    doubled = make_sampler({"name": identity_sampler, "scale": 2.0}, sched, "score")(NET, key, (4, 3))
    np.testing.assert_allclose(doubled, 2.0 * x)
    with pytest.raises(ConfigError, match="sampler.scale must be a positive number"):
        make_sampler({"name": identity_sampler, "scale": -1.0}, sched, "score")
    with pytest.raises(ConfigError, match=r"unknown keys \['n_steps'\]; valid keys are \['scale'\]"):
        make_sampler({"name": identity_sampler, "n_steps": 3}, sched, "score")
    with pytest.raises(ConfigError, match="sampler.name='ddim' is not valid; choose one of .*'identity'"):
        make_sampler({"name": "ddim"}, sched, "score")


def test_a_registered_denoising_loss_is_used_by_name_and_validates_the_schedule(l1_loss):
    sched = VPSchedule()
    x0 = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    key = jax.random.PRNGKey(2)
    per, t = make_loss_fn(l1_loss, sched, "eps")(NET, x0, key)
    assert per.shape == (6,) and t.shape == (6,)
    key_t, key_eps = jax.random.split(key)
    np.testing.assert_array_equal(t, sched.sample_t(key_t, 6))
    eps = jax.random.normal(key_eps, x0.shape)
    np.testing.assert_allclose(per, jnp.mean(jnp.abs(NET(sched.perturb(x0, eps, t), t) - eps), axis=-1), rtol=1e-6)

    assert l1_loss in losses.DENOISING_LOSSES
    fixed, t_fixed = denoising_loss(NET, x0, key, sched, "eps", l1_loss, t=jnp.full((6,), 0.3))
    assert fixed.shape == (6,) and bool(jnp.all(t_fixed == 0.3))
    with pytest.raises(ConfigError, match="loss.name='l1' does not support schedule.name='edm'"):
        make_loss_fn(l1_loss, EDMSchedule(), "eps")
    with pytest.raises(ConfigError, match="loss.name='l2' is not valid; choose one of .*'l1'"):
        make_loss_fn("l2", sched, "eps")


def test_denoising_losses_follow_the_registry():
    register_loss("l1", LossSpec(denoising_fn(_l1_maths)))
    try:
        assert losses.DENOISING_LOSSES[-1] == "l1"
    finally:
        LOSSES.pop("l1")
    assert "l1" not in losses.DENOISING_LOSSES


def test_edm_loss_on_a_non_edm_schedule_fails_when_the_loss_is_made():
    with pytest.raises(ConfigError, match=r"loss.name='edm' needs schedule.name='edm', got RectifiedFlowSchedule"):
        make_loss_fn("edm", RectifiedFlowSchedule(), "x0")


def test_registering_a_taken_name_raises_and_keeps_the_original():
    pc, dsm = SAMPLERS["pc"], LOSSES["dsm"]
    with pytest.raises(ConfigError, match="sampler.name='pc' is already registered"):
        register_sampler("pc", SamplerSpec({}, _build_identity))
    with pytest.raises(ConfigError, match="loss.name='dsm' is already registered"):
        register_loss("dsm", LossSpec(denoising_fn(_l1_maths)))
    assert SAMPLERS["pc"] is pc and LOSSES["dsm"] is dsm


def test_built_in_loss_flags_and_the_non_denoising_error():
    assert losses.DENOISING_LOSSES == ("dsm", "eps", "velocity", "edm")
    assert LOSSES["ssm"].forward_mode and not LOSSES["ssm"].denoising
    assert not any(spec.forward_mode for name, spec in LOSSES.items() if name != "ssm")
    x0 = jnp.ones((2, 2))
    with pytest.raises(ConfigError, match=r"loss.name='ssm' is not a denoising loss.*\['dsm', 'edm', 'eps', 'velocity'\]"):
        denoising_loss(NET, x0, jax.random.PRNGKey(0), VESchedule(), "score", "ssm")
    with pytest.raises(ConfigError, match="loss.name='ssm' draws its own noise levels"):
        LOSSES["ssm"].fn(NET, x0, jax.random.PRNGKey(0), VESchedule(), "score", t=jnp.full((2,), 0.5))


@pytest.mark.parametrize("module, registry", [(samplers, SAMPLERS), (losses, LOSSES)], ids=["samplers", "losses"])
def test_every_registered_name_has_a_row_in_the_module_docstring_table(module, registry):
    rows = {line.split()[0] for line in module.__doc__.splitlines() if line[:1].isalpha() and "  " in line}
    assert set(registry) <= rows, sorted(set(registry) - rows)
