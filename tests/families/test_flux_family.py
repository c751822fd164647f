"""The FLUX family: ``net`` is the packed FluxTransformer at 1000 t, the pooled ablation and steering act on y as in
SD3, guidance defaults, checkpoint export round trips, scanned + remat gradients equal the unrolled ones."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.flux import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule
from mmdit_jax.families import build_family, family_config, get_family
from mmdit_jax.families.flux import FluxFamily
from mmdit_jax.models.flux import latent_image_ids, pack_latents, text_ids, unpack_latents
from mmdit_jax.models.flops import flux_forward_flops


def _family(**overrides):
    fields = {k: v for k, v in get_config("tiny").items() if k != "name"}
    return build_family(family_config("flux", **{**fields, **overrides}), RectifiedFlowSchedule(), 1000.0)


def _setup(family, b=2, height=6, width=10, tokens=13):
    """Inputs, and variables with the shapes of ``family.init`` (abstract: nothing compiled) drawn at random:
    weights N(0, 1/fan_in), vectors 1 + 0.2 N(0, 1) for norm scales, 0.2 N(0, 1) otherwise, so every gate and
    modulation is far from zero and every path reaches the output."""
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    cfg = family.config
    x = jax.random.normal(keys[0], (b, height, width, cfg.latent_channels))
    cond = {"context": jax.random.normal(keys[1], (b, tokens, cfg.joint_attention_dim)),
            "pooled": jax.random.normal(keys[2], (b, cfg.pooled_projection_dim)),
            "guidance": jnp.array([3.5, 2.0])}
    shapes = jax.eval_shape(family.init, keys[3], x, cond)
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        if len(leaf.shape) > 1:
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) / np.sqrt(leaf.shape[0]))
        base = 1.0 if getattr(path[-1], "key", "") == "scale" else 0.0
        return jnp.asarray(base + 0.2 * rng.standard_normal(leaf.shape, np.float32))

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    others = [jax.random.normal(k, cond["pooled"].shape) for k in keys[4:6]]
    return x, cond, variables, others, jax.random.uniform(keys[3], (b,))


def test_net_is_the_packed_model_at_1000_t_and_guidance_defaults_to_3_5():
    family = _family()
    assert get_family("flux") is FluxFamily and family.conditioning == ("context", "pooled")
    x, cond, variables, _, t = _setup(family)
    out = family.net(family.prepare(variables), cond)(x, t)
    ref = family.module.apply(variables, pack_latents(x), t, cond["context"], cond["pooled"], latent_image_ids(6, 10),
                              text_ids(13), cond["guidance"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(unpack_latents(ref, 6, 10)))
    no_entry = {k: v for k, v in cond.items() if k != "guidance"}
    np.testing.assert_array_equal(np.asarray(family.net(variables, no_entry)(x, t)),
                                  np.asarray(family.net(variables, {**cond, "guidance": jnp.full((2,), 3.5)})(x, t)))
    assert out.shape == x.shape


def test_remove_pooled_drops_h_y_and_zero_steering_is_no_steering():
    family = _family()
    x, cond, variables, (plus, minus), t = _setup(family)
    full = family.net(variables, cond)(x, t)
    removed = family.net(variables, {k: v for k, v in cond.items() if k != "pooled"}, remove_pooled=True)(x, t)
    # h_y = 0 when the text embedder's last layer is zero: the model with the pooled contribution removed
    params = jax.tree_util.tree_map(lambda v: v, variables["params"])
    params["text_embedder"] = {**params["text_embedder"],
                               "linear_2": jax.tree_util.tree_map(jnp.zeros_like, params["text_embedder"]["linear_2"])}
    np.testing.assert_allclose(np.asarray(removed), np.asarray(family.net({"params": params}, cond)(x, t)),
                               atol=1e-6, rtol=0)
    assert float(jnp.abs(removed - full).max()) > 1e-3
    steer = lambda w: family.net(variables, {**cond, "pooled_steering": (plus, minus, w)})(x, t)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(steer(jnp.zeros((2,)))), np.asarray(full))
    assert float(jnp.abs(steer(jnp.ones((2,))) - full).max()) > 1e-3
    with pytest.raises(ConfigError, match="pooled_steering needs the pooled path"):
        family.net(variables, {**cond, "pooled_steering": (plus, minus, 1.0)}, remove_pooled=True)(x, t)


def test_export_round_trips_and_flops_and_checks():
    family = _family(guidance_embeds=False)
    _, _, variables, _, _ = _setup(family)
    for layout in ("diffusers", "original"):
        cfg, loaded = FluxFamily.load_pretrained(family.export(variables, layout), axes_dims_rope=(4, 6, 6))
        assert cfg == family.config
        for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match="layout='ckpt'"):
        family.export(variables, "ckpt")
    with pytest.raises(ConfigError, match="pass axes_dims_rope"):
        FluxFamily.load_pretrained(family.export(variables))
    assert family.forward_flops(2, (6, 10, 4), {"context": (2, 13, 32)}) == flux_forward_flops(family.config, 2, 6, 10, 13)
    with pytest.raises(ConfigError, match="must be even"):
        family.check_data((6, 9, 4))
    with pytest.raises(ConfigError, match="4x the channels"):
        family.check_data((6, 10, 16))
    with pytest.raises(ConfigError, match="model.axes_dims_rope"):
        _family(axes_dims_rope=(4, 4, 4))
    with pytest.raises(ConfigError, match="model.attention_impl"):
        build_family(family_config("flux", attention_impl="cudnn"), RectifiedFlowSchedule(), 1000.0, forward_mode=True)


def test_scanned_rematerialised_gradients_equal_the_unrolled_ones():
    from mmdit_jax.models.flux_params import stack_blocks, unstack_blocks

    family = _family()
    scanned = FluxFamily(dataclasses.replace(family.config, scan_blocks=True, remat=True, remat_policy="minimal"),
                         RectifiedFlowSchedule())
    x, cond, variables, _, t = _setup(family)

    def loss(fam, params):
        return jnp.mean(jnp.square(fam.net(fam.prepare({"params": params}), cond)(x, t)))

    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(family, p)))(variables["params"])
    stacked = stack_blocks(variables, family.config)["params"]
    value_s, grads_s = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(stacked)
    assert abs(float(value) - float(value_s)) <= 1e-6 * abs(float(value))
    grads_s = unstack_blocks({"params": grads_s}, family.config)["params"]
    for a, b in zip(jax.tree_util.tree_leaves(grads_s), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
