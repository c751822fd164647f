"""Kernels cast to the compute dtype once per step (``cast_kernels``) give the forward and the float32 gradients
of casting them where each is used, scanned or not."""

import jax
import jax.numpy as jnp
import numpy as np

from configs.mmdit import get_config
from mmdit_jax.families import model_config
from mmdit_jax.models.mmdit import MMDiT
from mmdit_jax.models.numerics import cast_kernels


def test_cast_once_equals_cast_where_used():
    # scanned blocks: where the cast moves out of the loop (unrolled, only where it happens changes)
    cfg = model_config({**get_config("tiny"), "dtype": "bfloat16", "scan_blocks": True, "num_layers": 2,
                                 "dual_attention_layers": ()})
    model = MMDiT(cfg)
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(keys[0], (2, 8, 8, cfg.in_channels))
    c = jax.random.normal(keys[1], (2, 5, cfg.joint_attention_dim))
    y = jax.random.normal(keys[2], (2, cfg.pooled_projection_dim))
    t = jnp.array([3.0, 700.0])
    variables = jax.jit(model.init)(keys[3], x, t, c, y)  # eager init of a scanned model takes ~10 s
    params, buffers = variables["params"], {"buffers": variables["buffers"]}
    target = jax.random.normal(keys[4], x.shape)

    def loss(p, cast):
        p = cast_kernels(p, cfg.dtype) if cast else p
        return jnp.mean((model.apply({"params": p, **buffers}, x, t, c, y).astype(jnp.float32) - target) ** 2)

    cast = cast_kernels(params, cfg.dtype)
    dtypes = {jax.tree_util.keystr(k): v.dtype for k, v in jax.tree_util.tree_leaves_with_path(cast)}
    assert all(d == jnp.bfloat16 for k, d in dtypes.items() if k.endswith("['kernel']")), dtypes
    assert all(d == jnp.float32 for k, d in dtypes.items() if not k.endswith("['kernel']")), dtypes
    (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, b) for b in (False, True))
    np.testing.assert_array_equal(l0, l1)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), g0, g1)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(g1))
