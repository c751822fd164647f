"""MMDiT presets, parameter counts, memory, the CLIP-removal switch and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.mmdit import get_config
from mmdit_jax.checks import ConfigError
from mmdit_jax.families import model_config
from mmdit_jax.interop.sd3 import from_diffusers, load_sd3, to_diffusers
from mmdit_jax.models.mmdit import MMDiT
from mmdit_jax.models.flops import num_parameters
from mmdit_jax.models.mmdit_params import abstract_variables
from mmdit_jax.train.sharding import bytes_per_device


@pytest.mark.parametrize("name, billions", [("sd3_medium", 2.028), ("sd35_medium", 2.243), ("sd35_large", 8.057)])
def test_parameter_counts_of_the_released_models(name, billions):
    variables = abstract_variables(model_config(get_config(name)))
    assert round(num_parameters(variables["params"]) / 1e9, 3) == billions
    m = get_config(name).pos_embed_max_size
    assert variables["buffers"]["pos_embed"].shape == (1, m * m, 64 * get_config(name).num_layers)


def test_sd3_medium_params_and_adamw_state_fit_80gb_per_device_with_fsdp_over_8():
    params = abstract_variables(model_config(get_config("sd3_medium")))["params"]
    opt_state = jax.eval_shape(optax.adamw(1e-4).init, params)
    per_device = bytes_per_device((params, opt_state), fsdp_size=8)
    total = bytes_per_device((params, opt_state), fsdp_size=1)
    assert total > 3 * 4 * 2.0e9                      # fp32 params + two fp32 moments really counted
    assert per_device < total / 7.9                   # nearly everything is sharded
    assert per_device < 80e9


def _tiny(**overrides):
    return model_config({**get_config("tiny"), **overrides})


def _init(cfg, h=8, w=8, tokens=5):
    x = jnp.ones((2, h, w, cfg.in_channels))
    c = jnp.ones((2, tokens, cfg.joint_attention_dim))
    y = jnp.ones((2, cfg.pooled_projection_dim)) if cfg.use_pooled else None
    return MMDiT(cfg).init(jax.random.PRNGKey(0), x, jnp.ones((2,)), c, y), x, c, y


def test_clip_removal_switch_drops_the_pooled_path_entirely():
    with_pooled, *_ = _init(_tiny())
    without, x, c, _ = _init(_tiny(use_pooled=False))
    assert "text_embedder" in with_pooled["params"] and "text_embedder" not in without["params"]
    out = MMDiT(_tiny(use_pooled=False)).apply(without, x, jnp.ones((2,)), c)
    assert out.shape == x.shape
    cfg = _tiny(use_pooled=False)
    sd = to_diffusers(cfg, without)
    assert not any(k.startswith("time_text_embed.text_embedder") for k in sd)
    cfg2, _ = load_sd3(sd, head_dim=8)
    assert cfg2.use_pooled is False


def test_output_has_the_input_shape_and_pooled_vector_matters():
    cfg = _tiny()
    variables, x, c, y = _init(cfg, h=6, w=10)
    x = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    a = MMDiT(cfg).apply(variables, x, jnp.ones((2,)), c, y)
    b = MMDiT(cfg).apply(variables, x, jnp.ones((2,)), c, 2 * y)
    assert a.shape == x.shape and float(jnp.abs(a - b).max()) > 0


def test_bfloat16_compute_stays_close_to_float32():
    cfg32 = _tiny()
    variables, x, c, y = _init(cfg32)
    x = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    ref = MMDiT(cfg32).apply(variables, x, jnp.full((2,), 500.0), c, y)
    out = MMDiT(_tiny(dtype="bfloat16")).apply(variables, x, jnp.full((2,), 500.0), c, y)
    assert out.dtype == jnp.bfloat16
    assert float(jnp.abs(out.astype(jnp.float32) - ref).max() / jnp.abs(ref).max()) < 0.05


@pytest.mark.parametrize("shape_x, shape_c, shape_y, match", [
    ((2, 8, 8, 3), (2, 5, 32), (2, 64), "in_channels=4"),
    ((2, 8, 8, 4), (2, 5, 16), (2, 64), "joint_attention_dim=32"),
    ((2, 8, 8, 4), (2, 5, 32), (2, 63), "pooled_projection_dim=64"),
    ((2, 200, 8, 4), (2, 5, 32), (2, 64), "pos_embed_max_size=96"),
])
def test_bad_input_shapes_name_the_field(shape_x, shape_c, shape_y, match):
    cfg = _tiny()
    variables, *_ = _init(cfg)
    with pytest.raises(ConfigError, match=match):
        MMDiT(cfg).apply(variables, jnp.ones(shape_x), jnp.ones((2,)), jnp.ones(shape_c), jnp.ones(shape_y))


def test_spatial_size_not_divisible_by_patch_size():
    cfg = model_config({**get_config("small"), "num_layers": 2})
    with pytest.raises(ConfigError, match="not divisible by model.patch_size=2"):
        _init(cfg, h=7, w=8)


def test_checkpoint_with_missing_or_unexpected_keys_names_them():
    cfg = _tiny()
    variables, *_ = _init(cfg)
    sd = to_diffusers(cfg, variables)
    broken = dict(sd)
    del broken["transformer_blocks.1.attn.to_q.weight"]
    broken["transformer_blocks.1.attn.extra.weight"] = np.zeros(3)
    with pytest.raises(ConfigError, match=r"missing keys \['transformer_blocks.1.attn.to_q.weight'\].*"
                                          r"unexpected keys \['transformer_blocks.1.attn.extra.weight'\]"):
        from_diffusers(broken, cfg)
    with pytest.raises(ConfigError, match="pos_embed.proj.weight"):
        load_sd3({k: v for k, v in sd.items() if k != "pos_embed.proj.weight"})


@pytest.mark.parametrize("field, value, match", [
    ("qk_norm", "layer_norm", "model.qk_norm"), ("dtype", "fp8", "model.dtype"),
    ("dual_attention_layers", (3,), "dual_attention_layers"), ("num_heads", 0, "model.num_heads"),
])
def test_bad_model_config_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        _tiny(**{field: value})
    with pytest.raises(ConfigError, match="unknown keys"):
        model_config({**get_config("tiny"), "depth": 3})


def test_einsum_attention_equals_dot_product_attention():
    cfg = _tiny()
    variables, x, c, y = _init(cfg)
    variables = jax.tree_util.tree_map(lambda v: v + 0.05 * jnp.cos(jnp.arange(v.size).reshape(v.shape)), variables)
    t = jnp.array([300.0, 700.0])
    ref = MMDiT(_tiny(attention_impl="xla")).apply(variables, x, t, c, y)      # jax.nn.dot_product_attention
    for impl in ("einsum", "einsum_vjp"):
        out = MMDiT(_tiny(attention_impl=impl)).apply(variables, x, t, c, y)
        np.testing.assert_allclose(out, ref, atol=1e-5 * float(jnp.abs(ref).max()))


def test_einsum_attention_gradient_equals_autodiff_of_dot_product_attention():
    from mmdit_jax.models.layers import einsum_attention

    q, k, v, w = (jax.random.normal(jax.random.PRNGKey(i), (5, 7, 3, 8)) for i in range(4))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    ref_out = jax.nn.dot_product_attention(q, k, v)
    ref = jax.grad(loss(jax.nn.dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    # One stream of 7 tokens, or two streams (4 + 3 tokens, split off and joined again inside einsum_attention).
    # groups: 1; uneven groups of whole batch elements (2 + 3; 1 + 1 + 1 + 2); uneven runs of the 5 x 3 = 15 heads
    # (7 groups > B); more groups than heads (one each).
    cases = ((1, False, 1), (1, True, 4), (1, True, 16), (2, True, 1), (2, True, 2), (2, True, 7), (2, False, 4))
    for streams, custom, groups in cases:
        def ours_fn(q, k, v):
            lengths = (7,) if streams == 1 else (4, 3)
            parts = list(zip(*(jax.lax.split(a, lengths, axis=1) for a in (q, k, v))))  # [(q_s, k_s, v_s)]
            return jnp.concatenate(einsum_attention(parts, custom, groups), axis=1)
        np.testing.assert_allclose(ours_fn(q, k, v), ref_out, atol=1e-5 * float(jnp.abs(ref_out).max()))
        ours = jax.grad(loss(ours_fn), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()),
                                       err_msg=f"{streams=}, {custom=}, {groups=}")


def test_padded_attention_equals_unpadded_values_and_gradients():
    # The padding route that lets cuDNN train on SD3's odd joint length (1024 + 333); checked here through XLA.
    from mmdit_jax.models.layers import padded_dot_product_attention

    q, k, v, w = (jax.random.normal(jax.random.PRNGKey(i), (2, 13, 3, 8)) for i in range(4))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w)

    plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")  # noqa: E731
    padded = lambda q, k, v: padded_dot_product_attention(q, k, v, "xla", multiple=8)  # noqa: E731
    np.testing.assert_allclose(padded(q, k, v), plain(q, k, v), atol=1e-6)
    for a, b in zip(jax.grad(loss(padded), (0, 1, 2))(q, k, v), jax.grad(loss(plain), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_attention_backend_defaults_per_platform():
    from mmdit_jax.models.layers import attention_backend

    assert attention_backend(None, jnp.float32, 64) == "einsum_vjp"  # this suite runs on the CPU
    assert attention_backend("xla", jnp.bfloat16, 64) == "xla"
