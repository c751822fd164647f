"""LoRA on the parameter tree: a fresh adapter changes nothing (bit for bit), merge and unmerge are inverse, the
scanned layout adapts like the unrolled one, the gradient reaches only the factors, targets are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.adapters.lora import (
    LoraConfig,
    adapter_paths,
    init_lora,
    merge,
    target_paths,
    unmerge,
)
from mmdit_jax.checks import ConfigError
from mmdit_jax.models.flops import num_parameters
from mmdit_jax.models.mmdit import MMDiT, MMDiTConfig
from mmdit_jax.models.mmdit_params import stack_blocks, unstack_blocks

CFG = dict(patch_size=2, in_channels=4, num_layers=3, num_heads=2, head_dim=8, joint_attention_dim=16,
           pooled_projection_dim=16, pos_embed_max_size=8, sample_size=8, qk_norm="rms_norm")
LORA = LoraConfig(rank=3, alpha=6.0, targets=("to_q", "to_k", "to_v", "to_out", "add_q_proj", "to_add_out",
                                              ".*ff/proj_in"))


@pytest.fixture(scope="module")
def model():
    cfg = MMDiTConfig.from_dict(CFG)
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k[0], (2, 8, 8, 4))
    t = jnp.array([3.0, 700.0])
    ctx = jax.random.normal(k[1], (2, 5, 16))
    pooled = jax.random.normal(k[2], (2, 16))
    module = MMDiT(cfg)
    variables = module.init(k[3], x, t, ctx, pooled)
    variables = {"params": variables["params"], "buffers": variables["buffers"]}
    forward = jax.jit(lambda params: module.apply({**variables, "params": params}, x, t, ctx, pooled))
    forward.inputs = (x, t, ctx, pooled)
    return cfg, variables, forward


def random_adapter(params, key, config=LORA):
    """An adapter with both factors random (a trained one), not the zero-B initialisation."""
    adapter = init_lora(key, params, config)
    leaves, tree = jax.tree_util.tree_flatten(adapter)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_a_fresh_adapter_leaves_the_model_bit_identical(model):
    _, variables, forward = model
    params = variables["params"]
    adapter = init_lora(jax.random.PRNGKey(1), params, LORA)
    merged = merge(params, adapter, LORA.scale)
    for a, b in zip(jax.tree_util.tree_leaves(merged), jax.tree_util.tree_leaves(params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(forward(merged)), np.asarray(forward(params)))
    # A as PEFT draws it: U(-1/sqrt(d_in), 1/sqrt(d_in)), non-degenerate
    a = np.asarray(adapter["transformer_blocks_0"]["attn"]["to_q"]["lora_A"])
    assert a.shape == (16, 3) and 0.5 / 4 < np.abs(a).max() <= 1 / 4


def test_targets_select_modules_by_name_or_path(model):
    _, variables, _ = model
    paths = {"/".join(p) for p in target_paths(variables["params"], LORA.targets)}
    assert "transformer_blocks_0/ff/proj_in" in paths and "transformer_blocks_0/ff_context/proj_in" not in paths
    assert "transformer_blocks_2/attn/to_add_out" not in paths            # the last block has no context output
    assert len(paths) == 3 * 6 + 2                                        # 6 per block, to_add_out in two
    adapter = init_lora(jax.random.PRNGKey(0), variables["params"], LORA)
    assert {"/".join(p) for p in adapter_paths(adapter)} == paths
    # r (d_in + d_out) per module: 6 (5 in the last block) attention 16x16 and one ff 16x64 per block
    assert num_parameters(adapter) == (6 + 6 + 5) * 3 * (16 + 16) + 3 * 3 * (16 + 64)


def test_merge_and_unmerge_are_inverse_and_merge_adds_s_a_b(model):
    _, variables, _ = model
    params = variables["params"]
    adapter = random_adapter(params, jax.random.PRNGKey(2))
    merged = merge(params, adapter, LORA.scale)
    w = np.asarray(params["transformer_blocks_1"]["attn"]["to_v"]["kernel"], np.float64)
    ab = adapter["transformer_blocks_1"]["attn"]["to_v"]
    expected = w + 2.0 * np.asarray(ab["lora_A"], np.float64) @ np.asarray(ab["lora_B"], np.float64)
    np.testing.assert_allclose(merged["transformer_blocks_1"]["attn"]["to_v"]["kernel"], expected, atol=1e-6)
    assert not np.allclose(merged["transformer_blocks_1"]["attn"]["to_v"]["kernel"], w)
    np.testing.assert_array_equal(merged["transformer_blocks_1"]["norm1"]["kernel"],
                                  params["transformer_blocks_1"]["norm1"]["kernel"])   # untargeted: untouched
    back = unmerge(merged, adapter, LORA.scale)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_scanned_blocks_adapt_like_unrolled_ones(model):
    cfg, variables, forward = model
    adapter = random_adapter(variables["params"], jax.random.PRNGKey(3))
    scanned_cfg = MMDiTConfig.from_dict({**CFG, "scan_blocks": True})
    scanned = stack_blocks(variables, scanned_cfg)
    scanned_adapter = stack_blocks({"params": adapter}, scanned_cfg)["params"]
    merged = merge(scanned["params"], scanned_adapter, LORA.scale)
    unrolled = unstack_blocks({"params": merged}, scanned_cfg)["params"]
    reference = merge(variables["params"], adapter, LORA.scale)
    for a, b in zip(jax.tree_util.tree_leaves(unrolled), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # a fresh adapter of the scanned layout has stacked factors (L, d, r) (the last block is not scanned)
    fresh = init_lora(jax.random.PRNGKey(4), scanned["params"], LORA)
    stacked_a = [x for p, x in jax.tree_util.tree_flatten_with_path(fresh["scan_0_2"])[0] if p[-1].key == "lora_A"]
    assert len(stacked_a) == 7 and all(x.shape[0] == 2 and x.ndim == 3 for x in stacked_a)
    out = MMDiT(scanned_cfg).apply({**scanned, "params": merged}, *forward.inputs)
    np.testing.assert_allclose(out, forward(reference), rtol=0, atol=1e-5 * float(np.abs(out).max()))


def test_the_gradient_reaches_only_the_factors_and_a_gets_none_while_b_is_zero(model):
    _, variables, forward = model
    params = variables["params"]
    adapter = init_lora(jax.random.PRNGKey(5), params, LORA)
    grads = jax.grad(lambda ad: jnp.sum(forward(merge(params, ad, LORA.scale)) ** 2))(adapter)
    g = grads["transformer_blocks_0"]["attn"]["to_q"]
    # dA = s dW' B^T = 0 at B = 0; dB = s A^T dW' is not
    assert np.abs(np.asarray(g["lora_A"])).max() == 0.0
    assert np.abs(np.asarray(g["lora_B"])).max() > 0.0
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(adapter)


def test_bad_targets_and_mismatched_adapters_are_named(model):
    _, variables, _ = model
    params = variables["params"]
    with pytest.raises(ConfigError, match="match no module.*to_q"):
        init_lora(jax.random.PRNGKey(0), params, LoraConfig(targets=("to_query",)))
    with pytest.raises(ConfigError, match="patch_embed.*not a Dense kernel"):
        init_lora(jax.random.PRNGKey(0), params, LoraConfig(targets=("patch_embed",)))
    with pytest.raises(ConfigError, match="lora.rank"):
        LoraConfig(rank=0).validate()
    with pytest.raises(ConfigError, match="lora.targets"):
        LoraConfig(targets="to_q").validate()
    adapter = {"transformer_blocks_9": {"attn": {"to_q": {"lora_A": jnp.zeros((16, 2)),
                                                           "lora_B": jnp.zeros((2, 16))}}}}
    with pytest.raises(ConfigError, match="transformer_blocks_9/attn/to_q"):
        merge(params, adapter, 1.0)


def test_a_merged_layer_equals_the_unmerged_two_path_product():
    """x (W + s A B) + b against PEFT's unmerged form x W + b + s (x A) B, on a Dense layer of the models."""
    from mmdit_jax.models.layers import Dense

    k = jax.random.split(jax.random.PRNGKey(7), 4)
    x = jax.random.normal(k[0], (3, 5, 24))
    layer = Dense(40)
    params = layer.init(k[1], x)["params"]
    adapter = {"lora_A": jax.random.normal(k[2], (24, 4)) / 5, "lora_B": jax.random.normal(k[3], (4, 40)) / 5}
    merged = merge({"dense": params}, {"dense": adapter}, 1.5)["dense"]
    y_merged = layer.apply({"params": merged}, x)
    y_unmerged = layer.apply({"params": params}, x) + 1.5 * (x @ adapter["lora_A"]) @ adapter["lora_B"]
    scale = float(np.abs(np.asarray(y_unmerged)).max())
    np.testing.assert_allclose(y_merged, y_unmerged, rtol=0, atol=1e-6 * scale)
    assert np.abs(np.asarray(y_merged - layer.apply({"params": params}, x))).max() > 0.1
