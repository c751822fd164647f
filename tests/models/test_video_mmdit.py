"""The MMDiT on clips (B, T, H, W, C): a one-frame clip is the image model, patching round-trips, clean context
frames are the same tokens as the joint clip's first frames, and frame counts are checked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.mmdit import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.families import model_config
from mmdit_jax.models.embeddings import frame_offset_embedding, frame_offsets, patchify_clip, unpatchify_clip
from mmdit_jax.models.mmdit import MMDiT

BASE = {**get_config("tiny"), "num_layers": 2, "patch_size": 2}


def _inputs(key, frames, size=8, batch=2, cfg=BASE):
    k = jax.random.split(key, 4)
    x = jax.random.normal(k[0], (batch, frames, size, size, cfg["in_channels"]))
    c = jax.random.normal(k[1], (batch, 5, cfg["joint_attention_dim"]))
    y = jax.random.normal(k[2], (batch, cfg["pooled_projection_dim"]))
    t = jnp.asarray([3.0, 640.0])[:batch]
    return x, t, c, y


def _variables(model, x, t, c, y):
    v = jax.jit(model.init)(jax.random.PRNGKey(7), x, t, c, y)
    # adaLN-Zero starts with zero output projections: move them, so every token's path reaches the output
    return jax.tree_util.tree_map(lambda a: a + 0.05 * jnp.cos(jnp.arange(a.size).reshape(a.shape)), v)


@pytest.fixture(scope="module")
def model_and_variables():
    model = MMDiT(model_config(BASE))
    x, t, c, y = _inputs(jax.random.PRNGKey(0), 3)
    return model, _variables(model, x[:, 0], t, c, y)     # initialised as an image model


def test_a_one_frame_clip_is_the_image_model(model_and_variables):
    model, v = model_and_variables
    x, t, c, y = _inputs(jax.random.PRNGKey(1), 1)
    clip = model.apply(v, x, t, c, y)
    image = model.apply(v, x[:, 0], t, c, y)
    assert clip.shape == x.shape
    np.testing.assert_array_equal(np.asarray(clip[:, 0]), np.asarray(image))


def test_context_frames_are_the_joint_clips_first_frames(model_and_variables):
    # Tokens carry their positions additively and attention is order-free, so the noisy clip after 2 clean context
    # frames sees exactly the tokens of the 5-frame joint clip: the outputs agree up to summation order.
    model, v = model_and_variables
    x, t, c, y = _inputs(jax.random.PRNGKey(2), 5)
    joint = model.apply(v, x, t, c, y)
    chunk = model.apply(v, x[:, 2:], t, c, y, context_frames=x[:, :2])
    assert chunk.shape == x[:, 2:].shape
    np.testing.assert_allclose(chunk, joint[:, 2:], atol=2e-5 * float(jnp.abs(joint).max()))
    # the context is read: other context frames, another output; and positions matter (swapping frames does not
    # simply swap the outputs)
    other = model.apply(v, x[:, 2:], t, c, y, context_frames=x[:, :2] + 1.0)
    assert float(jnp.abs(other - chunk).max()) > 1e-3
    swapped = model.apply(v, x[:, ::-1], t, c, y)[:, ::-1]
    assert float(jnp.abs(swapped - joint).max()) > 1e-3


def test_clips_of_any_length_run_and_frame_counts_are_checked(model_and_variables):
    model, v = model_and_variables
    for frames in (2, 7):          # lengths never seen at initialisation: sin-cos frame offsets exist for any frame
        x, t, c, y = _inputs(jax.random.PRNGKey(frames), frames)
        assert model.apply(v, x, t, c, y).shape == x.shape
    x, t, c, y = _inputs(jax.random.PRNGKey(3), 3)
    with pytest.raises(ConfigError, match="context_frames must be clean frames"):
        model.apply(v, x, t, c, y, context_frames=x[:, :1, :4])
    with pytest.raises(ConfigError, match="context_frames must be clean frames"):
        model.apply(v, x[:, 0], t, c, y, context_frames=x[:, :1])
    pt2 = MMDiT(model_config({**BASE, "temporal_patch_size": 2}))
    with pytest.raises(ConfigError, match="3 frames is not divisible by model.temporal_patch_size=2"):
        pt2.init(jax.random.PRNGKey(0), x, t, c, y)
    with pytest.raises(ConfigError, match="temporal_patch_size=2 patches clips"):
        pt2.init(jax.random.PRNGKey(0), x[:, 0], t, c, y)


def test_temporal_patches_round_trip_and_predict_whole_clips():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 4, 6, 8, 3))
    for pt, p in ((1, 2), (2, 2), (4, 1)):
        tokens = patchify_clip(x, pt, p)
        assert tokens.shape == (2, (4 // pt) * (6 // p) * (8 // p), pt * p * p * 3)
        np.testing.assert_array_equal(unpatchify_clip(tokens, 4 // pt, 6 // p, 8 // p, pt, p, 3), x)
    # token 0 is frames [0, pt) x pixels [0, p)^2, in (t, p, q, c) order
    np.testing.assert_array_equal(patchify_clip(x, 2, 2)[:, 0], x[:, :2, :2, :2].reshape(2, -1))
    model = MMDiT(model_config({**BASE, "temporal_patch_size": 2}))
    x, t, c, y = _inputs(jax.random.PRNGKey(5), 4)
    v = _variables(model, x, t, c, y)
    assert v["params"]["patch_embed"]["kernel"].shape == (2, 2, 2, BASE["in_channels"], model.config.hidden)
    assert model.apply(v, x, t, c, y).shape == x.shape
    assert model.apply(v, x[:, 2:], t, c, y, context_frames=x[:, :2]).shape == x[:, 2:].shape


def test_frame_offsets_are_the_1d_sincos_difference_and_zero_at_frame_0():
    d = 16
    rows = frame_offsets(d, 4, start=2)
    omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
    e = lambda f: np.concatenate([np.sin(f * omega), np.cos(f * omega)])  # noqa: E731
    np.testing.assert_allclose(rows, np.stack([e(f) - e(0) for f in range(2, 6)]), atol=1e-6)
    assert not np.any(frame_offsets(d, 1)[0])
    np.testing.assert_array_equal(frame_offset_embedding(d, 3), frame_offsets(d, 4)[3])
