"""Rematerialisation policies (``model.remat_policy``): the same gradients as no rematerialisation, and the
memory order the policies promise, read from XLA's memory analysis of the compiled backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mmdit import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.families import model_config
from mmdit_jax.models.mmdit import MMDiT
from mmdit_jax.models.numerics import REMAT_POLICIES


def test_remat_policies_keep_the_gradient_and_order_the_backward_memory():
    # Scanned blocks and autodiff gradients: the configuration rematerialisation is for (a GPU at SD3 size).
    # Eight layers, so the saved residuals outweigh the backward's other buffers (at three, full ~ minimal).
    base = {**get_config("tiny"), "num_layers": 8, "dual_attention_layers": (), "scan_blocks": True,
            "custom_gradients": False}
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(keys[0], (4, 16, 16, base["in_channels"]))
    c = jax.random.normal(keys[1], (4, 12, base["joint_attention_dim"]))
    y = jax.random.normal(keys[2], (4, base["pooled_projection_dim"]))
    t = jnp.linspace(3.0, 700.0, 4)
    u = jax.random.normal(keys[4], x.shape)
    # Deterministic non-zero values of the variables' shapes (no compiled init): the output projections must be
    # non-zero (adaLN-Zero initialises them to zero) so every parameter gets a gradient.
    shapes = jax.eval_shape(MMDiT(model_config(base)).init, keys[3], x, t, c, y)
    variables = jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.05 * np.cos(np.arange(s.size) * 0.7).reshape(s.shape), s.dtype), shapes)

    def backward(extra):
        model = MMDiT(model_config({**base, **extra}))
        grad = jax.jit(jax.grad(lambda v, x: jnp.sum(model.apply(v, x, t, c, y) * u), (0, 1)))
        compiled = grad.lower(variables, x).compile()
        return compiled(variables, x), compiled.memory_analysis().temp_size_in_bytes

    ref, ref_bytes = backward({})
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(ref))
    temp = {}
    for policy in REMAT_POLICIES:
        grads, temp[policy] = backward({"remat": True, "remat_policy": policy})
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            np.testing.assert_allclose(g, flat_ref[path], atol=1e-5 * float(jnp.abs(flat_ref[path]).max()) + 1e-7,
                                       err_msg=f"{policy} {jax.tree_util.keystr(path)}")
    # full keeps only block inputs; minimal adds the projections' outputs; dots the attention products too
    assert temp["full"] < temp["minimal"] < temp["dots"] < ref_bytes, (temp, ref_bytes)


def test_remat_policy_is_validated():
    with pytest.raises(ConfigError, match="model.remat_policy='some'.*'full', 'minimal'"):
        model_config({**get_config("tiny"), "remat": True, "remat_policy": "some"})
