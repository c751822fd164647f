"""Parity with diffusers' CosmosTransformer3DModel (PyTorch CPU, fp32) on random weights converted by our converter,
on diffusers' tiny test config with and without the learnable extra position embedding; image (T = 1) and clip
(T = 3) inputs, non-square frames, per-frame times, fps, a non-trivial padding mask and a text mask; the scanned and
rematerialised block stack; the converter round trip; preset sizes from abstract shapes; the FLOP count."""

import dataclasses
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.interop.cosmos import from_diffusers, infer_config, load_cosmos, to_diffusers  # noqa: E402
from mmdit_jax.models.cosmos import (  # noqa: E402
    COSMOS_PREDICT2_2B, COSMOS_PREDICT2_14B, CosmosConfig, CosmosTransformer, abstract_variables,
    cosmos_forward_flops, patchify, stack_blocks, unpatchify,
)
from mmdit_jax.models.flops import num_parameters  # noqa: E402
from tests.torch_reference import numpy_state, randomize  # noqa: E402

# diffusers' own test config (tests/models/transformers/test_models_transformer_cosmos.py)
TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, mlp_ratio=2,
            text_embed_dim=16, adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0),
            concat_padding_mask=True)
# what the weights do not record (read from config.json when loading a folder)
UNRECORDED = dict(rope_scale=(2.0, 1.0, 1.0), max_size=(4, 32, 32))


def _nearest_resize(img, size, interpolation):
    """torchvision's tensor ``resize`` with NEAREST is ``interpolate(mode="nearest")``; torchvision is not
    installed here, and diffusers only resizes the padding mask with it."""
    return torch.nn.functional.interpolate(img, size=list(size), mode="nearest")


@pytest.fixture(scope="module")
def cosmos_module():
    import diffusers.models.transformers.transformer_cosmos as module

    if not hasattr(module, "transforms"):
        module.transforms = types.SimpleNamespace(functional=types.SimpleNamespace(resize=_nearest_resize),
                                                  InterpolationMode=types.SimpleNamespace(NEAREST="nearest"))
    return module


@pytest.fixture(scope="module")
def models(cosmos_module):
    """``{extra_pos_embed_type: (torch model, config, variables)}``; every parameter random (tests/torch_reference)."""
    out = {}
    for seed, extra in enumerate(["learnable", None]):
        torch.manual_seed(seed)
        ref = randomize(cosmos_module.CosmosTransformer3DModel(**TINY, extra_pos_embed_type=extra))
        cfg, variables = load_cosmos(numpy_state(ref), **UNRECORDED)
        out[extra] = ref, cfg, variables
    return out


def inputs(seed, batch, frames, height, width, tokens=12, per_frame=False):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (batch, frames) if per_frame else batch).astype(np.float32)
    return dict(x=rng.standard_normal((batch, frames, height, width, 4), np.float32), t=t,
                context=rng.standard_normal((batch, tokens, 16), np.float32))


def run_reference(ref, inp, padding_mask=None, context_mask=None, fps=None):
    _, _, height, width, _ = inp["x"].shape
    t = torch.from_numpy(inp["t"])
    if t.ndim == 2:                                                     # diffusers' per-frame layout (B, 1, T, 1, 1)
        t = t[:, None, :, None, None]
    mask = torch.zeros(1, 1, height, width) if padding_mask is None else torch.from_numpy(padding_mask)[:, None]
    with torch.no_grad():
        out = ref(torch.from_numpy(inp["x"].transpose(0, 4, 1, 2, 3)), t, torch.from_numpy(inp["context"]),
                  padding_mask=mask, fps=fps,
                  attention_mask=None if context_mask is None else torch.from_numpy(context_mask)).sample
    return out.numpy().transpose(0, 2, 3, 4, 1)


def compiled_ours(cfg, variables, inp, **kw):
    """The jitted forward, compiled once: ``(outputs, compiled)`` (the compiled one also gives XLA's cost)."""
    f = jax.jit(lambda v, x, t, c: CosmosTransformer(cfg).apply(v, x, t, c, **kw))
    args = (variables, jnp.asarray(inp["x"]), jnp.asarray(inp["t"]), jnp.asarray(inp["context"]))
    compiled = f.lower(*args).compile()
    return np.asarray(compiled(*args)), compiled


def rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


# (extra pos embed, batch, frames, height, width, per-frame times, fps, padding mask, text mask, scanned + remat)
CASES = {
    "image-learnable": ("learnable", 2, 1, 16, 16, False, None, False, False, False),   # diffusers' test input
    "clip-learnable-nonsquare-perframe-fps": ("learnable", 2, 3, 8, 12, True, 30.0, False, False, False),
    "image-nonsquare-padmask-textmask": (None, 2, 1, 10, 14, False, None, True, True, False),
    "clip-square-scanned-remat": (None, 1, 3, 8, 8, False, None, False, False, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_output_equals_diffusers_to_1e5(models, case):
    extra, b, frames, h, w, per_frame, fps, pad, text_mask, scanned = CASES[case]
    ref, cfg, variables = models[extra]
    if scanned:
        variables = stack_blocks(variables, cfg)
        cfg = dataclasses.replace(cfg, scan_blocks=True, remat=True)
    inp = inputs(list(CASES).index(case), b, frames, h, w, per_frame=per_frame)
    rng = np.random.default_rng(1)
    # a mask at an odd multiple of the latent size, so the nearest-neighbour indices are not a plain stride
    padding_mask = (rng.uniform(size=(1, 2 * h + 3, 2 * w + 1)) < 0.5).astype(np.float32) if pad else None
    context_mask = np.arange(12)[None, :] < np.array([[12], [7]]) if text_mask else None
    expected = run_reference(ref, inp, padding_mask, context_mask, fps)
    kw = dict(fps=fps, padding_mask=jnp.asarray(padding_mask) if pad else None,
              context_mask=None if context_mask is None else jnp.asarray(context_mask))
    ours, compiled = compiled_ours(cfg, variables, inp, **kw)
    assert ours.shape == (b, frames, h, w, 4)
    assert rel_err(ours, expected) <= 1e-5
    if case == "image-learnable":   # XLA's count of the same program: matmuls are most of it, never more
        analysis = compiled.cost_analysis()
        xla = float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"])
        assert 0.6 * xla <= cosmos_forward_flops(cfg, b, frames, h, w, 12) <= xla


def test_loader_builds_the_scanned_layout(models):
    ref, cfg, variables = models["learnable"]
    loaded_cfg, loaded = load_cosmos(numpy_state(ref), scan_blocks=True, **UNRECORDED)
    assert loaded_cfg == dataclasses.replace(cfg, scan_blocks=True)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(stack_blocks(variables, cfg))


def test_converter_round_trip_and_strict_load(models, cosmos_module):
    for extra, (ref, cfg, variables) in models.items():
        sd = numpy_state(ref)
        back = to_diffusers(cfg, variables)
        assert sorted(back) == sorted(sd)
        assert all(np.array_equal(back[k], sd[k]) for k in sd)
        model = cosmos_module.CosmosTransformer3DModel(**TINY, extra_pos_embed_type=extra)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    _, cfg, variables = models[None]
    assert to_diffusers(cfg, stack_blocks(variables, cfg)).keys() == to_diffusers(cfg, variables).keys()


def test_converter_errors_name_the_keys(models):
    ref, cfg, _ = models[None]
    sd = numpy_state(ref)
    with pytest.raises(ConfigError, match="missing keys.*proj_out.weight"):
        from_diffusers({k: v for k, v in sd.items() if k != "proj_out.weight"}, cfg)
    with pytest.raises(ConfigError, match="transformer_blocks.0.ff.net.2.weight has shape"):
        from_diffusers({**sd, "transformer_blocks.0.ff.net.2.weight": np.zeros((24, 47), np.float32)}, cfg)
    assert infer_config(sd, rope_scale=(2.0, 1.0, 1.0)) == dataclasses.replace(cfg, max_size=(128, 240, 240))


def test_patchify_orders():
    """Patchify reads ``(c, p_t, p_h, p_w)``; unpatchify writes ``(p_h, p_w, p_t, c)`` (diffusers), so it is not
    patchify's inverse unless the token features are permuted accordingly."""
    x = jnp.arange(2 * 4 * 6 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 6, 4, 3)
    p = (2, 3, 2)
    tokens = patchify(x, p)
    assert tokens.shape == (2, 2 * 2 * 2, 3 * 12)
    assert np.array_equal(tokens[0, 0], x[0, :2, :3, :2].transpose(3, 0, 1, 2).reshape(-1))
    permuted = tokens.reshape(2, 8, 3, 2, 3, 2).transpose(0, 1, 4, 5, 3, 2).reshape(2, 8, -1)
    assert np.array_equal(unpatchify(permuted, (2, 2, 2), p), x)


def test_presets_have_the_released_sizes():
    counts = {c.num_layers: num_parameters(abstract_variables(dataclasses.replace(c, scan_blocks=True)))
              for c in (COSMOS_PREDICT2_2B, COSMOS_PREDICT2_14B)}
    assert counts == {28: 1_956_405_248, 36: 14_265_265_152}             # 1.956 B and 14.27 B
    assert (COSMOS_PREDICT2_2B.hidden, COSMOS_PREDICT2_14B.hidden) == (2048, 5120)


def test_learnable_embedding_with_no_rows_for_the_grid_and_bad_configs_raise(models):
    _, cfg, variables = models["learnable"]
    inp = inputs(0, 1, 5, 8, 8)                                           # 5 frames > max_size t = 4
    with pytest.raises(ConfigError, match="learnable position tables"):
        CosmosTransformer(cfg).apply(variables, jnp.asarray(inp["x"]), jnp.asarray(inp["t"]),
                                     jnp.asarray(inp["context"]))
    with pytest.raises(ConfigError, match="model.head_dim"):
        CosmosConfig.from_dict(dict(head_dim=10))
    with pytest.raises(ConfigError, match="model.extra_pos_embed_type"):
        CosmosConfig.from_dict(dict(extra_pos_embed_type="sincos"))
    with pytest.raises(ConfigError, match="model.patch_size"):
        CosmosConfig.from_dict(dict(patch_size=(1, 2)))
