"""The FLUX family on clips ``(B, T, H, W, C)``: a one-frame clip is the image model, the spatio-temporal packing
inverts exactly and keeps each frame's image packing, context frames are the clip's earlier frames (their tokens
follow the clip's at times 0 .. T_c/p_t - 1), clips longer than any seen run, the temporal patch size is checked,
and the FLOP count is the image count over the clip's tokens.

Every network call goes through one jitted function (one compile per input structure, ~1 s each on a CPU core),
and the variables are drawn at random with the shapes of ``family.init`` (abstract: nothing compiled)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.flux import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule
from mmdit_jax.families import build_family, family_config
from mmdit_jax.models.flux import latent_clip_ids, latent_image_ids, pack_clip, pack_latents, unpack_clip
from mmdit_jax.models.flops import flux_forward_flops

B, H, W, C, TEXT = 2, 6, 10, 4, 13


def _family(**overrides):
    fields = {k: v for k, v in get_config("tiny").items() if k != "name"}
    return build_family(family_config("flux", **{**fields, **overrides}), RectifiedFlowSchedule(), 1000.0)


def _cond(seed=1):
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    return {"context": jax.random.normal(keys[0], (B, TEXT, 32)), "pooled": jax.random.normal(keys[1], (B, 24)),
            "guidance": jnp.array([3.5, 2.0])}


def _variables(family, x, cond):
    """Random variables shaped like ``family.init(x)``: weights N(0, 1/fan_in), norm scales 1 + 0.2 N(0, 1), other
    vectors 0.2 N(0, 1), so every gate and modulation is far from zero and every token reaches the output."""
    shapes = jax.eval_shape(family.init, jax.random.PRNGKey(0), x, cond)
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        if len(leaf.shape) > 1:
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) / np.sqrt(leaf.shape[0]))
        base = 1.0 if getattr(path[-1], "key", "") == "scale" else 0.0
        return jnp.asarray(base + 0.2 * rng.standard_normal(leaf.shape, np.float32))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _clip(frames, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, frames, H, W, C))


T_NOISE = jnp.array([0.3, 0.8])
FAMILY = _family()
FAMILY_PT2 = _family(in_channels=32, out_channels=32, temporal_patch_size=2)
# A family is hashable by identity: static under jit, so every test shares one cache of compiled programs. XLA's
# backend optimisations off: compiling takes half the time, and every comparison below is between programs compiled
# alike (outputs differ from optimised ones by float32 reassociation only, ~1e-6).
_run = jax.jit(lambda family, variables, cond, x, t: family.net(variables, cond)(x, t), static_argnums=0,
               compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


@pytest.fixture(scope="module")
def variables():
    return _variables(FAMILY, _clip(3), _cond())


def test_init_on_a_clip_gives_the_image_models_variables(variables):
    image = jax.eval_shape(FAMILY.init, jax.random.PRNGKey(0), _clip(1)[:, 0], _cond())
    assert jax.tree_util.tree_map(lambda a: a.shape, variables) == jax.tree_util.tree_map(lambda a: a.shape, image)


def test_one_frame_clip_equals_the_image_model(variables):
    x, cond = _clip(1), _cond()
    # frame 0 of a clip has exactly the image's tokens and ids
    np.testing.assert_array_equal(np.asarray(pack_clip(x)), np.asarray(pack_latents(x[:, 0])))
    np.testing.assert_array_equal(latent_clip_ids(1, H, W), latent_image_ids(H, W))
    image = _run(FAMILY, variables, cond, x[:, 0], T_NOISE)
    clip = _run(FAMILY, variables, cond, x, T_NOISE)
    assert clip.shape == x.shape
    np.testing.assert_allclose(np.asarray(clip[:, 0]), np.asarray(image), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pt", [1, 2])
def test_spatio_temporal_packing_round_trips_and_keeps_the_image_packing_per_frame(pt):
    frames = 4
    x = _clip(frames, seed=3)[..., :3]
    tokens = pack_clip(x, pt)
    tau, n = frames // pt, (H // 2) * (W // 2)
    assert tokens.shape == (B, tau * n, pt * 4 * 3)
    np.testing.assert_array_equal(np.asarray(unpack_clip(tokens, frames, H, W, pt)), np.asarray(x))
    # time outermost; within a token the pt frames' image features (c, ph, pw) one after the other
    per_frame = np.asarray(tokens).reshape(B, tau, n, pt, 4 * 3)
    for f in range(frames):
        np.testing.assert_array_equal(per_frame[:, f // pt, :, f % pt], np.asarray(pack_latents(x[:, f])))
    ids = latent_clip_ids(frames, H, W, pt, first=3).reshape(tau, n, 3)
    np.testing.assert_array_equal(ids[..., 0], 3 + np.arange(tau, dtype=np.float32)[:, None] + np.zeros((1, n)))
    np.testing.assert_array_equal(ids[..., 1:], np.broadcast_to(latent_image_ids(H, W)[:, 1:], (tau, n, 2)))


def test_context_frames_are_the_clips_earlier_frames_and_the_output_is_the_noisy_clip(variables):
    """Positions depend only on the ids and every token attends to every token, so a clip of 4 frames after 3
    context frames is the last 4 frames of the 7-frame clip [context; clip] (same t): the layout and the time ids
    of both groups are right. Other context frames give another output."""
    whole, cond = _clip(7), _cond()
    out = _run(FAMILY, variables, {**cond, "context_frames": whole[:, :3]}, whole[:, 3:], T_NOISE)
    assert out.shape == (B, 4, H, W, C)
    ref = _run(FAMILY, variables, cond, whole, T_NOISE)[:, 3:]
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=2e-6 * float(jnp.abs(ref).max()))
    other = _run(FAMILY, variables, {**cond, "context_frames": _clip(3, seed=7)}, whole[:, 3:], T_NOISE)
    assert float(jnp.abs(other - out).max()) > 1e-3


def test_clips_shorter_and_longer_than_the_initialising_one_run_through_the_same_parameters(variables):
    for frames in (1, 7):      # the parameters come from a 3-frame clip; these programs are compiled above
        out = _run(FAMILY, variables, _cond(), _clip(frames), T_NOISE)
        assert out.shape == (B, frames, H, W, C) and bool(jnp.all(jnp.isfinite(out)))


def test_temporal_patches_of_two_frames_init_and_run_with_context_frames():
    x, cond = _clip(2), _cond()
    variables = _variables(FAMILY_PT2, x, cond)       # init on a clip: only the token layers widen
    params = variables["params"]
    assert params["x_embedder"]["kernel"].shape == (2 * 4 * C, 32) and params["proj_out"]["kernel"].shape == (32, 2 * 4 * C)
    assert FAMILY_PT2.config.latent_channels == C
    out = _run(FAMILY_PT2, variables, {**cond, "context_frames": _clip(2, seed=5)}, x, T_NOISE)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


def test_temporal_patch_size_and_context_frames_are_checked(variables):
    family, cond = FAMILY_PT2, _cond()
    net = family.net(variables, cond)
    with pytest.raises(ConfigError, match="model.temporal_patch_size=2"):
        net(_clip(3), T_NOISE)                                         # 3 frames, 2 per token
    with pytest.raises(ConfigError, match="model.temporal_patch_size=2"):
        net(_clip(1)[:, 0], T_NOISE)                                   # an image for a clip model
    with pytest.raises(ConfigError, match="model.temporal_patch_size=2"):
        family.net(variables, {**cond, "context_frames": _clip(1)})(_clip(2), T_NOISE)
    with pytest.raises(ConfigError, match="model.temporal_patch_size=2"):
        family.check_data((3, H, W, C))
    with pytest.raises(ConfigError, match="model.temporal_patch_size=2"):
        family.check_data((H, W, C))
    with pytest.raises(ConfigError, match="model.temporal_patch_size=2"):
        family.check_conditioning({"context_frames": (B, 3, H, W, C)})
    with pytest.raises(ConfigError, match="model.temporal_patch_size=2"):
        _family(in_channels=12, out_channels=12, temporal_patch_size=2)   # 12 is not 4 x 2 x C
    family.check_data((4, H, W, C))
    FAMILY.check_data((5, H, W, C))
    FAMILY.check_data((H, W, C))
    with pytest.raises(ConfigError, match="must be even"):
        FAMILY.check_data((5, H, W - 1, C))
    with pytest.raises(ConfigError, match="cannot be combined"):
        FAMILY.net(variables, {**cond, "context_frames": _clip(1), "reference": _clip(1)[:, 0]})
    with pytest.raises(ConfigError, match="cannot go with a clip"):
        FAMILY.net(variables, {**cond, "reference": _clip(1)[:, 0]})(_clip(2), T_NOISE)
    with pytest.raises(ConfigError, match="frames of a clip"):
        FAMILY.net(variables, {**cond, "context_frames": _clip(1)})(_clip(1)[:, 0], T_NOISE)


@pytest.mark.parametrize("pt", [1, 2])
def test_forward_flops_count_the_clips_tokens_and_the_mlps_grow_linearly_in_t(pt):
    family = FAMILY if pt == 1 else FAMILY_PT2
    cfg, shapes = family.config, {"context": (B, TEXT, 32)}
    n = (H // 2) * (W // 2)

    def flops(frames, context_frames=0):
        cond = {**shapes, "context_frames": (B, context_frames, H, W, C)} if context_frames else shapes
        return family.forward_flops(B, (frames, H, W, C), cond)

    def attention(frames):     # the quadratic part: Q K^T and A V over [txt; img] in every block
        length = TEXT + frames // pt * n
        return B * (cfg.num_layers + cfg.num_single_layers) * 4 * length ** 2 * cfg.hidden

    rest = [flops(pt * k) - attention(pt * k) for k in range(1, 6)]
    steps = np.diff(rest)
    assert steps[0] > 0 and np.all(steps == steps[0])                  # projections and MLPs: linear in T
    assert flops(2 * pt, context_frames=pt) == flops(3 * pt)          # context frames are tokens like the clip's
    if pt == 1:
        assert flops(1) == family.forward_flops(B, (H, W, C), shapes) == flux_forward_flops(cfg, B, H, W, TEXT)


def test_chunked_attention_is_the_xla_attention_in_the_flux_blocks():
    import dataclasses

    from mmdit_jax.models.flux_blocks import dot_product_attention

    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (1, 37, 2, 8)) for i in range(3))
    np.testing.assert_allclose(dot_product_attention(q, k, v, "chunked"), dot_product_attention(q, k, v, "xla"),
                               atol=1e-5)
    from mmdit_jax.models.flux import FluxConfig

    assert dataclasses.replace(FluxConfig(), attention_impl="chunked").validate() is None
