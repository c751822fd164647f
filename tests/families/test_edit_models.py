"""Editing inputs of the model families: in-context reference tokens (frame 1 of the position table for SD3; FLUX's
ids (1, row, col) are checked against diffusers' Kontext pipeline in tests/pipelines) and channel concatenation with
a zero-widened input projection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.flux import get_config as flux_config
from mmdit_jax.adapters.widen import widen_inputs
from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule
from mmdit_jax.families import build_family, family_config
from mmdit_jax.models.embeddings import frame_offset_embedding

SD3 = dict(patch_size=2, in_channels=3, out_channels=3, num_layers=2, num_heads=2, head_dim=16,
           joint_attention_dim=24, pooled_projection_dim=8, pos_embed_max_size=8, sample_size=16, qk_norm="rms_norm")


def _sd3(**overrides):
    return build_family(family_config("sd3", **{**SD3, **overrides}), RectifiedFlowSchedule(), 1000.0)


def _flux(**overrides):
    fields = {k: v for k, v in flux_config("tiny").items() if k != "name"}
    return build_family(family_config("flux", **{**fields, **overrides}), RectifiedFlowSchedule(), 1000.0)


def _run(family, variables, cond, x, t):
    """``family.net(variables, cond)(x, t)``, compiled (op-by-op dispatch of a transformer is slow)."""
    return jax.jit(lambda v, c, x, t: family.net(v, c)(x, t))(variables, cond, x, t)


def _perturbed(variables):
    """Every parameter moved off its initial value (zero-initialised gates and projections included), so each
    path reaches the output."""
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(lambda v: v + 0.1 * rng.standard_normal(v.shape).astype(v.dtype), variables)


def _inputs(family, channels, b=2, size=8):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    cfg = family.config
    x = jax.random.normal(keys[0], (b, size, size, channels))
    cond = {"context": jax.random.normal(keys[1], (b, 5, cfg.joint_attention_dim)),
            "pooled": jax.random.normal(keys[2], (b, cfg.pooled_projection_dim))}
    return x, cond, jax.random.normal(keys[3], x.shape), jnp.array([0.3, 0.8])


def test_frame_offset_is_zero_for_the_target_frame_and_not_for_others():
    assert np.all(frame_offset_embedding(32, 0) == 0)
    assert np.abs(frame_offset_embedding(32, 1)).max() > 0.5
    assert np.abs(frame_offset_embedding(32, 1) - frame_offset_embedding(32, 2)).max() > 0.1


def test_sd3_reference_is_frame_1_of_the_image_stream_and_absent_the_model_is_text_to_image():
    family = _sd3()
    x, cond, ref, t = _inputs(family, 3)
    variables = _perturbed(jax.jit(family.init)(jax.random.PRNGKey(1), x, cond))
    apply = jax.jit(lambda v, x, t, c, y: family.module.apply(v, x, 1000.0 * t, c, y))
    plain = apply(variables, x, t, cond["context"], cond["pooled"])
    # no reference: exactly the text-to-image model
    np.testing.assert_array_equal(np.asarray(_run(family, variables, cond, x, t)), np.asarray(plain))
    edited = _run(family, variables, {**cond, "reference": ref}, x, t)
    assert edited.shape == x.shape and float(jnp.abs(edited - plain).max()) > 1e-3   # the reference is attended
    # the reference's tokens are the patch embedding + the same 2D positions + the frame-1 offset: those of frame 1
    # of the clip [x, ref] (the clip folds the offset into the positions first: equal up to rounding)
    clip = apply(variables, jnp.stack([x, ref], axis=1), t, cond["context"], cond["pooled"])
    np.testing.assert_allclose(np.asarray(edited), np.asarray(clip[:, 0]), atol=2e-5)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_zero_widened_channel_concat_model_equals_its_text_to_image_parent(name):
    parent = _sd3() if name == "sd3" else _flux()
    c = 3 if name == "sd3" else parent.config.latent_channels
    child = _sd3(in_channels=6) if name == "sd3" else _flux(in_channels=2 * parent.config.in_channels)
    x, cond, source, t = _inputs(parent, c)
    parent_vars = _perturbed(jax.jit(parent.init)(jax.random.PRNGKey(1), x, cond))
    child_shapes = jax.eval_shape(child.init, jax.random.PRNGKey(1), x, cond)
    params = widen_inputs(parent_vars["params"], child_shapes["params"])
    child_vars = {**parent_vars, "params": params}
    want = _run(parent, parent_vars, cond, x, t)
    got = _run(child, child_vars, {**cond, "concat": source}, x, t)
    scale = float(jnp.abs(want).max())
    assert float(jnp.abs(got - want).max()) <= 1e-6 * scale
    # once the new rows are trained the source matters
    noise = _perturbed(params)   # random, not constant: a shift equal across channels would vanish in the LayerNorm
    moved = jax.tree_util.tree_map(lambda p, q: jnp.where(p == 0, q, p), params, noise)   # only padded rows are 0
    assert float(jnp.abs(_run(child, {**child_vars, "params": moved}, {**cond, "concat": source}, x, t) - want).max()) \
        > 1e-3 * scale
    with pytest.raises(ConfigError, match="concat"):
        child.net(child_vars, cond)(x, t)
    with pytest.raises(ConfigError, match="reference"):
        child.net(child_vars, {**cond, "concat": source, "reference": source})


def test_widening_errors_name_the_parameter():
    with pytest.raises(ConfigError, match=r"kernel.*only one axis"):
        widen_inputs({"kernel": jnp.zeros((2, 3))}, {"kernel": jax.ShapeDtypeStruct((3, 4), jnp.float32)})
    with pytest.raises(ConfigError, match="do not match"):
        widen_inputs({"kernel": jnp.zeros((2, 3))}, {"bias": jax.ShapeDtypeStruct((3,), jnp.float32)})
