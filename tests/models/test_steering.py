"""Pooled-embedding removal and steering: y = e_t, and ŷ = y(p) + w (y(p+) - y(p-)) in the MMDiT and samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_config as default_config
from configs.mmdit import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.data.registry import dataset_spec
from mmdit_jax.diffusion.schedules import get_schedule
from mmdit_jax.families import model_config
from mmdit_jax.families.sd3 import SD3Family
from mmdit_jax.models.mmdit import MMDiT
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.pipelines.trained_model import TrainedModel


def _setup(seed=0, b=3):
    cfg = model_config(get_config("tiny"))
    keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    x = jax.random.normal(keys[0], (b, 8, 8, cfg.in_channels))
    c = jax.random.normal(keys[1], (b, 5, cfg.joint_attention_dim))
    pooled = [jax.random.normal(k, (b, cfg.pooled_projection_dim)) for k in keys[2:5]]
    model = MMDiT(cfg)
    variables = model.init(keys[5], x, jnp.ones((b,)), c, pooled[0])
    # Non-zero output layers: adaLN-zero init would hide every difference.
    variables = jax.tree_util.tree_map(lambda v: v + 0.02 * jax.random.normal(keys[5], v.shape), variables)
    return model, variables, x, c, pooled


def test_zero_weight_reproduces_the_original_exactly():
    model, v, x, c, (p, plus, minus) = _setup()
    t = jnp.array([100.0, 500.0, 900.0])
    base = jax.jit(lambda v: model.apply(v, x, t, c, p))(v)
    steered = jax.jit(lambda v, w: model.apply(v, x, t, c, p, pooled_steering=(plus, minus, w)))(v, 0.0)
    np.testing.assert_array_equal(np.asarray(steered), np.asarray(base))


def test_steering_from_p_towards_q_with_unit_weight_is_conditioning_on_q():
    # y(p) + 1 * (y(q) - y(p)) = y(q): the formula is linear in the pooled path's output.
    model, v, x, c, (p, q, _) = _setup(1)
    t = jnp.array([300.0, 600.0, 10.0])
    on_q = model.apply(v, x, t, c, q)
    steered = model.apply(v, x, t, c, p, pooled_steering=(q, p, 1.0))
    np.testing.assert_allclose(steered, on_q, atol=1e-5 * float(jnp.abs(on_q).max()))
    away = model.apply(v, x, t, c, p, pooled_steering=(q, p, 2.0))
    assert float(jnp.abs(away - on_q).max()) > 1e-3


def test_remove_pooled_is_the_model_without_the_pooled_path():
    model, v, x, c, (p, _, _) = _setup(2)
    t = jnp.array([250.0, 500.0, 750.0])
    removed = model.apply(v, x, t, c, None, remove_pooled=True)
    no_pooled_cfg = model_config({**get_config("tiny"), "use_pooled": False})
    params = {k: w for k, w in v["params"].items() if k != "text_embedder"}
    reference = MMDiT(no_pooled_cfg).apply({"params": params, "buffers": v["buffers"]}, x, t, c)
    np.testing.assert_array_equal(np.asarray(removed), np.asarray(reference))
    assert float(jnp.abs(removed - model.apply(v, x, t, c, p)).max()) > 1e-4
    with pytest.raises(ConfigError, match="pooled path"):
        model.apply(v, x, t, c, p, remove_pooled=True, pooled_steering=(p, p, 1.0))
    with pytest.raises(ConfigError, match="pooled_plus"):
        model.apply(v, x, t, c, p, pooled_steering=(p[:1], p, 1.0))


def test_a_model_without_a_pooled_path_refuses_removal_and_steering():
    # y = e_t by construction (the no-pooled control): neither switch may be a silent no-op there.
    model, v, x, c, (p, plus, minus) = _setup(4)
    t = jnp.array([250.0, 500.0, 750.0])
    no_pooled = MMDiT(model_config({**get_config("tiny"), "use_pooled": False}))
    params = {k: w for k, w in v["params"].items() if k != "text_embedder"}
    variables = {"params": params, "buffers": v["buffers"]}
    out = no_pooled.apply(variables, x, t, c)
    assert out.shape == x.shape
    with pytest.raises(ConfigError, match="remove_pooled=True on a model without a pooled path.*use_pooled"):
        no_pooled.apply(variables, x, t, c, remove_pooled=True)
    with pytest.raises(ConfigError, match="pooled_steering needs the pooled path"):
        no_pooled.apply(variables, x, t, c, pooled_steering=(plus, minus, 1.0))


@pytest.mark.parametrize("sampler", [{"name": "flow_euler", "n_steps": 3}, {"name": "ode", "method": "heun", "n_steps": 3},
                                     {"name": "pc", "n_steps": 3}], ids=["flow_euler", "ode_heun", "pc"])
def test_every_sampler_takes_steering_and_zero_weight_is_exact(sampler):
    model, v, _, c, (p, plus, minus) = _setup(3)
    cfg = default_config("tiny")
    cfg.sample.sampler = sampler
    schedule = get_schedule(cfg.schedule)
    family = SD3Family(model.config, schedule, cfg.timestep_scale)
    pipe = SamplingPipeline(TrainedModel(cfg, family, v, 0, dataset_spec("shapes"), (8, 8, 4), None))
    key = jax.random.PRNGKey(0)
    cond, null = {"context": c, "pooled": p}, {"context": jnp.zeros_like(c), "pooled": jnp.zeros_like(p)}
    base = pipe.sample(cond, key, negative=null)

    def steered(w):
        return pipe.sample({**cond, "pooled_steering": (plus, minus, jnp.full((p.shape[0],), w))}, key, negative=null)

    np.testing.assert_array_equal(np.asarray(steered(0.0)), np.asarray(base))
    assert float(jnp.abs(steered(3.0) - base).max()) > 1e-3
    removed = pipe.sample(cond, key, negative=null, remove_pooled=True)
    assert float(jnp.abs(removed - base).max()) > 1e-3
