"""The shared conditioning vector and image stream of both transformers: one ``Interventions`` argument (the
keyword spelling builds the same), its checks, and where each token group of the stream sits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.flux import get_config as flux_config
from configs.mmdit import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.families import model_config
from mmdit_jax.families.flux import image_ids
from mmdit_jax.models.conditioning import Interventions, PooledSteering
from mmdit_jax.models.flux import FluxTransformer, group_ids, latent_clip_ids, latent_image_ids, pack_latents, text_ids
from mmdit_jax.models.image_stream import TokenGroup, image_stream
from mmdit_jax.models.mmdit import MMDiT


def test_interventions_are_one_pytree_argument_with_static_switches():
    p = jnp.ones((2, 4))
    iv = Interventions.of(remove_pooled=False, skip_layers=[3, 1, 3], pooled_steering=(p, -p, 2.0))
    assert iv.skip_layers == (1, 3) and isinstance(iv.pooled_steering, PooledSteering)
    leaves, treedef = jax.tree_util.tree_flatten(iv)
    assert len(leaves) == 3                                              # p+, p-, w: data; the switches: static
    assert jax.tree_util.tree_unflatten(treedef, leaves).skip_layers == (1, 3)
    assert Interventions.merge(None) == Interventions()
    with pytest.raises(ConfigError, match="not both"):
        Interventions.merge(iv, remove_pooled=True)
    with pytest.raises(TypeError, match="extra_tokens"):
        Interventions.merge(None, extra_tokens=p)
    with pytest.raises(ConfigError, match=r"\(pooled_plus, pooled_minus, w\)"):
        Interventions.of(pooled_steering=(p, p))


def test_mmdit_takes_interventions_as_one_argument_or_as_keywords_alike():
    cfg = model_config(get_config("tiny"))
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(k[0], (2, 8, 8, cfg.in_channels))
    c = jax.random.normal(k[1], (2, 5, cfg.joint_attention_dim))
    p, q = (jax.random.normal(kk, (2, cfg.pooled_projection_dim)) for kk in k[2:4])
    model, t = MMDiT(cfg), jnp.array([200.0, 700.0])
    v = model.init(k[4], x, t, c, p)
    v = jax.tree_util.tree_map(lambda a: a + 0.02 * jax.random.normal(k[4], a.shape), v)
    iv = Interventions.of(skip_layers=(0,), pooled_steering=(q, p, 0.5))
    run = jax.jit(lambda v, iv: model.apply(v, x, t, c, p, iv))              # steering data traced, switches static
    by_keywords = model.apply(v, x, t, c, p, skip_layers=(0,), pooled_steering=(q, p, 0.5))
    np.testing.assert_allclose(np.asarray(run(v, iv)), np.asarray(by_keywords), atol=1e-6)
    assert float(jnp.abs(run(v, iv) - run(v, Interventions())).max()) > 1e-4


def test_flux_refuses_skip_layers_and_checks_its_conditioning_in_one_place():
    fields = {k: v for k, v in flux_config("tiny").items() if k != "name"}
    cfg = model_config({"name": "flux", **fields})
    model = FluxTransformer(cfg)
    tokens = jnp.zeros((1, 4, cfg.in_channels))
    context, pooled = jnp.zeros((1, 3, cfg.joint_attention_dim)), jnp.zeros((1, cfg.pooled_projection_dim))
    args = (tokens, jnp.zeros((1,)), context, pooled, latent_image_ids(4, 4), text_ids(3), jnp.ones((1,)))
    with pytest.raises(ConfigError, match="cannot skip blocks"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, Interventions.of(skip_layers=(1,))))
    with pytest.raises(ConfigError, match="needs a guidance scale"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args[:-1], None))
    with pytest.raises(ConfigError, match="pooled_steering needs the pooled path: remove_pooled=False"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, remove_pooled=True,
                                          pooled_steering=(pooled, pooled, 1.0)))
    assert pack_latents(jnp.zeros((1, 4, 4, cfg.latent_channels))).shape == tokens.shape


def test_image_stream_places_the_target_first_then_the_clean_groups():
    image, ref = jnp.zeros((2, 8, 6, 4)), jnp.zeros((2, 4, 10, 4))
    clip, before = jnp.zeros((2, 4, 8, 6, 4)), jnp.zeros((2, 2, 8, 6, 4))
    assert [g.frame for g in image_stream(image)] == [0]
    stream = image_stream(image, reference=ref)
    assert [(g.latents.shape, g.frame) for g in stream] == [(image.shape, 0), (ref.shape, 1)]
    assert [g.frame for g in image_stream(clip, context_frames=before)] == [2, 0]       # in frames
    assert [g.frame for g in image_stream(clip, context_frames=before, temporal_patch_size=2)] == [1, 0]  # patches
    # FLUX's ids of the groups: Kontext's (1, row, col) for the reference, times from T_c / p_t for the clip
    groups = image_stream(image, reference=ref)
    np.testing.assert_array_equal(np.concatenate([group_ids(g) for g in groups]), image_ids(8, 6, (4, 10)))
    np.testing.assert_array_equal(group_ids(TokenGroup(clip, 1), 2), latent_clip_ids(4, 8, 6, 2, first=1))
    with pytest.raises(ConfigError, match="cannot be combined"):
        image_stream(image, reference=ref, context_frames=before)
    with pytest.raises(ConfigError, match="cannot go with a clip"):
        image_stream(clip, reference=ref)
    with pytest.raises(ConfigError, match="context_frames must be clean frames of a clip"):
        image_stream(image, context_frames=before)
    with pytest.raises(ConfigError, match="context_frames must be clean frames"):
        image_stream(clip, context_frames=before[:, :, :4])
    with pytest.raises(ConfigError, match="not divisible by model.temporal_patch_size=2"):
        image_stream(clip, context_frames=before[:, :1], temporal_patch_size=2)
    with pytest.raises(ConfigError, match="reference must be a clean image"):
        image_stream(image, reference=ref[..., :3])
