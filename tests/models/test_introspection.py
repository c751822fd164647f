"""Inspection helpers: intermediate shapes and joint-attention maps, without changing the forward pass."""

import jax
import jax.numpy as jnp
import numpy as np

from configs.mmdit import get_config
from mmdit_jax.families import model_config
from mmdit_jax.models.introspection import (
    attention_maps,
    intermediate_shapes,
    text_to_image,
)
from mmdit_jax.models.mmdit import MMDiT


def _setup():
    cfg = model_config(get_config("tiny"))
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(keys[0], (2, 8, 8, cfg.in_channels))
    c = jax.random.normal(keys[1], (2, 5, cfg.joint_attention_dim))
    y = jax.random.normal(keys[2], (2, cfg.pooled_projection_dim))
    model = MMDiT(cfg)
    return cfg, model, model.init(keys[3], x, jnp.ones((2,)), c, y), (x, jnp.full((2,), 500.0), c, y)


def test_shapes_follow_the_token_streams():
    cfg, model, v, args = _setup()
    shapes = dict(intermediate_shapes(model, v, *args))
    n, t, d = (8 // cfg.patch_size) ** 2, 5, cfg.hidden
    assert shapes["MMDiT"] == (2, 8, 8, cfg.out_channels)
    assert shapes["context_embedder"] == (2, t, d)
    assert shapes["timestep_embedder"] == shapes["text_embedder"] == (2, d)      # y = e_t + h_y: (B, D)
    assert shapes["transformer_blocks_0"] == (2, n, d) and shapes["transformer_blocks_0[1]"] == (2, t, d)


def test_attention_maps_are_row_stochastic_and_inspection_changes_nothing():
    cfg, model, v, args = _setup()
    maps = attention_maps(model, v, *args)
    n, t = (8 // cfg.patch_size) ** 2, 5
    assert maps["transformer_blocks_0"].shape == (2, cfg.num_heads, n + t, n + t)
    for w in maps.values():
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    plain = model.apply(v, *args)
    inspected, _ = model.apply(v, *args, mutable=["attention"])
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(inspected))


def test_text_to_image_reads_the_image_query_text_key_block():
    b, h, n, t = 1, 2, 4, 3
    w = np.zeros((b, h, n + t, n + t), np.float32)
    w[:, :, 1, n + 2] = 1.0        # patch 1 attends text token 2 only (both heads)
    m = text_to_image(w, n, (2, 2))
    assert m.shape == (b, t, 2, 2)
    assert m[0, 2, 0, 1] == 1.0 and m.sum() == 1.0
