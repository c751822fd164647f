"""The VAE's hand-written layers equal the straightforward forms they replace, with the same parameter trees:
``GroupNorm`` = ``flax.linen.GroupNorm`` (two-pass variance), ``UpsampleConv`` = nearest 2x then ``nn.Conv`` 3x3."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.models.vae_blocks import GROUP_NORM_EPS, GroupNorm, UpsampleConv


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 5e-6), (jnp.bfloat16, 1e-2)])
def test_group_norm_equals_flax(dtype, tol):
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (2, 6, 10, 32))     # a large mean: two passes matter
    ours, ref = GroupNorm(8, dtype=dtype), nn.GroupNorm(8, epsilon=GROUP_NORM_EPS, use_fast_variance=False,
                                                        dtype=dtype)
    variables = ref.init(jax.random.PRNGKey(1), x)
    variables = jax.tree_util.tree_map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                                       variables)
    assert jax.tree_util.tree_structure(ours.init(jax.random.PRNGKey(1), x)) == jax.tree_util.tree_structure(variables)
    a, b = ours.apply(variables, x), ref.apply(variables, x)
    assert a.dtype == b.dtype == dtype
    assert float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))) <= tol


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 1e-2)])
def test_upsample_conv_equals_nearest_then_conv(dtype, tol):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 8))                   # odd sizes: every border case
    ours = UpsampleConv(6, dtype=dtype)
    ref = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype)
    variables = ours.init(jax.random.PRNGKey(1), x)
    variables = {"params": {**variables["params"],
                            "bias": jax.random.normal(jax.random.PRNGKey(2), (6,))}}
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    assert jax.tree_util.tree_structure(ref.init(jax.random.PRNGKey(1), up)) == jax.tree_util.tree_structure(variables)
    a, b = ours.apply(variables, x), ref.apply(variables, up)
    assert a.shape == b.shape == (2, 10, 14, 6) and a.dtype == dtype
    err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) / jnp.max(jnp.abs(b.astype(jnp.float32))))
    assert err <= tol, err
