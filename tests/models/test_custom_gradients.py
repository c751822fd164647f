"""Hand-written gradients (models/custom_gradients.py) against JAX's autodiff of the plain functions, and the
switch that turns them off for forward-mode autodiff (the sliced score matching loss)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mmdit import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.families import model_config
from mmdit_jax.models.custom_gradients import (
    bias_gelu_tanh,
    custom_gradients_on,
    linear,
)
from mmdit_jax.models.mmdit import MMDiT


def _assert_close(a, b, rel=1e-5):
    np.testing.assert_allclose(a, b, atol=rel * float(jnp.abs(b).max()))


@pytest.mark.parametrize("d_in, d_out", [(6, 5), (5, 6)])  # both forms of the weight gradient
def test_linear_values_and_gradients_equal_autodiff(d_in, d_out):
    x, w, u = (jax.random.normal(jax.random.PRNGKey(i), s) for i, s in enumerate(((13, d_in), (d_in, d_out),
                                                                                   (13, d_out))))
    ours = jax.value_and_grad(lambda x, w: jnp.sum(linear(x, w) * u), (0, 1))(x, w)
    ref = jax.value_and_grad(lambda x, w: jnp.sum(jnp.dot(x, w) * u), (0, 1))(x, w)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        _assert_close(a, b)


def test_bias_gelu_values_and_gradients_equal_autodiff():
    h = jnp.linspace(-6.0, 6.0, 101)                    # both tails and the curved middle
    z, b = h.reshape(101, 1) * jnp.ones((1, 3)), jnp.array([-0.5, 0.0, 1.5])
    plain = lambda z, b: jnp.sum(jnp.sin(z) * jax.nn.gelu(z + b, approximate=True))  # noqa: E731
    ours = jax.value_and_grad(lambda z, b: jnp.sum(jnp.sin(z) * bias_gelu_tanh(z, b)), (0, 1))(z, b)
    ref = jax.value_and_grad(plain, (0, 1))(z, b)
    for a, r in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        _assert_close(a, r)
    _assert_close(bias_gelu_tanh(z, b), jax.nn.gelu(z + b, approximate=True))


def test_custom_gradients_are_on_by_default_on_a_cpu_only():
    assert custom_gradients_on(None) is (jax.default_backend() == "cpu")
    assert custom_gradients_on(False) is False


@pytest.fixture(scope="module")
def models():
    """(hand-written, autodiff) models with the same variables, inputs ``(x, t, c, y)`` and a cotangent ``u``."""
    # Three layers: a dual-attention block, a plain one and the last, context-pre-only one.
    cfgs = [model_config({**get_config("tiny"), "num_layers": 3, "custom_gradients": on})
            for on in (True, False)]
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(keys[0], (2, 8, 8, cfgs[0].in_channels))
    c = jax.random.normal(keys[1], (2, 5, cfgs[0].joint_attention_dim))
    y = jax.random.normal(keys[2], (2, cfgs[0].pooled_projection_dim))
    t = jnp.array([3.0, 700.0])
    fast, plain = MMDiT(cfgs[0]), MMDiT(cfgs[1])
    variables = jax.jit(plain.init)(keys[3], x, t, c, y)
    # Non-zero output projections (adaLN-Zero initialises them to zero) so every parameter gets a gradient.
    variables = jax.tree_util.tree_map(lambda v: v + 0.05 * jnp.cos(jnp.arange(v.size).reshape(v.shape)), variables)
    return fast, plain, variables, (x, t, c, y), jax.random.normal(keys[4], x.shape)


def test_mmdit_gradients_with_and_without_custom_gradients_are_equal(models):
    fast, plain, variables, inputs, u = models

    def loss(model):
        return lambda v, x: jnp.sum(model.apply(v, x, *inputs[1:]) * u)

    ours = jax.jit(jax.grad(loss(fast), (0, 1)))(variables, inputs[0])
    ref = jax.jit(jax.grad(loss(plain), (0, 1)))(variables, inputs[0])
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref))
    for path, a in jax.tree_util.tree_leaves_with_path(ours):
        np.testing.assert_allclose(a, flat_ref[path], atol=1e-5 * float(jnp.abs(flat_ref[path]).max()) + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))


def test_forward_mode_needs_custom_gradients_off_and_agrees_with_the_reverse_mode(models):
    fast, plain, variables, (x, t, c, y), u = models
    v = jax.random.normal(jax.random.PRNGKey(9), x.shape)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: fast.apply(variables, x, t, c, y), (x,), (v,))
    _, jv = jax.jit(lambda x, v: jax.jvp(lambda x: plain.apply(variables, x, t, c, y), (x,), (v,)))(x, v)  # J v
    pullback = jax.jit(lambda x, u: jax.vjp(lambda x: fast.apply(variables, x, t, c, y), x)[1](u)[0])      # J^T u
    np.testing.assert_allclose(jnp.vdot(jv, u), jnp.vdot(v, pullback(x, u)), rtol=1e-4)  # <J v, u> = <v, J^T u>


def test_custom_gradients_config_is_validated():
    with pytest.raises(ConfigError, match="model.custom_gradients"):
        model_config({**get_config("tiny"), "custom_gradients": "yes"})
    with pytest.raises(ConfigError, match="einsum_vjp"):
        model_config({**get_config("tiny"), "custom_gradients": False, "attention_impl": "einsum_vjp"})
