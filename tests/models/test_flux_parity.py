"""Parity with diffusers' FluxTransformer2DModel (PyTorch CPU, fp32) on random weights converted by our converter;
the BFL layout against diffusers' own single-file converter; preset sizes from abstract shapes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mmdit_jax.interop.flux import diffusers_to_original, load_flux, original_to_diffusers, to_diffusers  # noqa: E402
from mmdit_jax.models.flux import (  # noqa: E402
    FluxConfig, FluxTransformer, latent_image_ids, pack_latents, text_ids, unpack_latents,
)
from mmdit_jax.models.flux_params import abstract_variables, stack_blocks, unstack_blocks  # noqa: E402
from mmdit_jax.models.flops import num_parameters  # noqa: E402
from mmdit_jax.models.rope import rope_tables  # noqa: E402
from tests.torch_reference import numpy_state, randomize  # noqa: E402

TINY = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24)


def reference_model(guidance_embeds=True, axes=(4, 6, 6), seed=0):
    """A diffusers model whose every parameter is random: weights N(0, 1/fan_in), vectors 0.2 N(0, 1) (+1 for norm
    scales), so every gate and modulation is far from zero and every path reaches the output."""
    torch.manual_seed(seed)
    model = diffusers.FluxTransformer2DModel(**TINY, guidance_embeds=guidance_embeds, axes_dims_rope=axes).eval()
    return randomize(model)


def inputs(seed, batch=2, height=6, width=10, tokens=13):
    rng = np.random.default_rng(seed)
    latents = rng.standard_normal((batch, height, width, 4), np.float32)
    return dict(latents=latents, t=rng.uniform(0, 1, batch).astype(np.float32),
                context=rng.standard_normal((batch, tokens, 32), np.float32),
                pooled=rng.standard_normal((batch, 24), np.float32),
                guidance=rng.uniform(1, 5, batch).astype(np.float32))


def run_reference(model, inp, guidance=True):
    _, height, width, _ = inp["latents"].shape
    tokens = diffusers.FluxPipeline._pack_latents(torch.from_numpy(inp["latents"].transpose(0, 3, 1, 2)),
                                                  len(inp["t"]), 4, height, width)
    with torch.no_grad():
        out = model(hidden_states=tokens, encoder_hidden_states=torch.from_numpy(inp["context"]),
                    pooled_projections=torch.from_numpy(inp["pooled"]), timestep=torch.from_numpy(inp["t"]),
                    img_ids=torch.from_numpy(latent_image_ids(height, width)),
                    txt_ids=torch.from_numpy(text_ids(inp["context"].shape[1])),
                    guidance=torch.from_numpy(inp["guidance"]) if guidance else None).sample
    return out.numpy()


def run_ours(cfg, variables, inp):
    _, height, width, _ = inp["latents"].shape
    return np.asarray(FluxTransformer(cfg).apply(
        variables, pack_latents(jnp.asarray(inp["latents"])), jnp.asarray(inp["t"]), jnp.asarray(inp["context"]),
        jnp.asarray(inp["pooled"]), latent_image_ids(height, width), text_ids(inp["context"].shape[1]),
        jnp.asarray(inp["guidance"]) if cfg.guidance_embeds else None))


def rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("guidance,axes", [(True, (4, 6, 6)), (False, (8, 4, 4))], ids=["dev-like", "schnell-like"])
def test_output_equals_diffusers_to_1e5(guidance, axes):
    model = reference_model(guidance, axes)
    cfg, variables = load_flux(numpy_state(model), axes_dims_rope=axes)
    assert (cfg.guidance_embeds, cfg.axes_dims_rope, cfg.head_dim, cfg.num_single_layers) == (guidance, axes, 16, 2)
    for seed, (h, w, tokens) in [(0, (6, 10, 13)), (1, (8, 8, 8))]:    # non-square, odd text length; square
        inp = inputs(seed, height=h, width=w, tokens=tokens)
        inp["t"][0] = 1.0 if seed == 0 else inp["t"][0]                   # the time end point (1000 after scaling)
        ref = run_reference(model, inp, guidance)
        assert rel_err(run_ours(cfg, variables, inp), ref) <= 1e-5


def test_packing_and_ids_equal_the_pipeline_helpers():
    x = np.random.default_rng(0).standard_normal((2, 6, 10, 4), np.float32)
    ref = diffusers.FluxPipeline._pack_latents(torch.from_numpy(x.transpose(0, 3, 1, 2)), 2, 4, 6, 10).numpy()
    np.testing.assert_array_equal(np.asarray(pack_latents(jnp.asarray(x))), ref)
    np.testing.assert_array_equal(np.asarray(unpack_latents(jnp.asarray(ref), 6, 10)), x)
    ids = diffusers.FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32).numpy()
    np.testing.assert_array_equal(latent_image_ids(6, 10), ids)


def test_rope_tables_equal_flux_pos_embed():
    """Host (numpy ids) tables are diffusers' float64 tables rounded to float32; traced ids give float32 tables
    within 1e-5 at FLUX.1's 1024px grid (64 x 64 positions) and 512 text tokens."""
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    axes = (16, 56, 56)
    ids = np.concatenate([text_ids(512), latent_image_ids(128, 128)])
    ref_cos, ref_sin = (a.numpy() for a in FluxPosEmbed(10000, list(axes))(torch.from_numpy(ids)))
    cos, sin = rope_tables(ids, axes)
    assert np.max(np.abs(np.asarray(cos) - ref_cos)) <= 6e-8 and np.max(np.abs(np.asarray(sin) - ref_sin)) <= 6e-8
    traced = jax.jit(lambda i: rope_tables(i, axes))(jnp.asarray(ids))
    assert max(float(np.max(np.abs(np.asarray(a) - r))) for a, r in zip(traced, (ref_cos, ref_sin))) <= 1e-5


def test_original_layout_matches_diffusers_converter_and_gives_identical_outputs(monkeypatch):
    from diffusers.loaders import single_file_utils

    model = reference_model(seed=2)
    sd = numpy_state(model)
    original = {"model.diffusion_model." + k: v for k, v in diffusers_to_original(sd).items()}
    assert "model.diffusion_model.single_blocks.1.linear1.weight" in original
    np.testing.assert_array_equal(original_to_diffusers(original)["norm_out.linear.weight"], sd["norm_out.linear.weight"])

    # diffusers' converter splits linear1 by FLUX.1's sizes (inner_dim 3072); give it the tiny model's instead
    d = 32
    real_split = torch.split

    def split(t, sizes, dim=0):
        return real_split(t, [d, d, d, 4 * d] if list(sizes) == [3072, 3072, 3072, 12288] else sizes, dim)

    monkeypatch.setattr(single_file_utils, "torch", type("T", (), {"split": staticmethod(split),
                                                                   "__getattr__": lambda s, n: getattr(torch, n)})())
    oracle = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers(
        {k: torch.from_numpy(v.copy()) for k, v in original.items()})
    assert set(oracle) == set(sd)
    for k, v in oracle.items():
        np.testing.assert_array_equal(v.numpy(), sd[k], err_msg=k)

    cfg_a, var_a = load_flux(sd, axes_dims_rope=(4, 6, 6))
    cfg_b, var_b = load_flux(original, axes_dims_rope=(4, 6, 6))
    assert cfg_a == cfg_b
    inp = inputs(4)
    np.testing.assert_array_equal(run_ours(cfg_a, var_a, inp), run_ours(cfg_b, var_b, inp))


def test_flax_to_diffusers_to_flax_round_trip_is_exact_and_scan_gives_the_same_outputs(tmp_path):
    from mmdit_jax.interop.safetensors_io import save_state_dict

    model = reference_model(seed=3)
    sd = numpy_state(model)
    cfg, variables = load_flux(sd, axes_dims_rope=(4, 6, 6))
    back = to_diffusers(cfg, variables)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    save_state_dict(back, str(tmp_path / "model.safetensors"))
    cfg_s, scanned = load_flux(tmp_path, axes_dims_rope=(4, 6, 6), scan_blocks=True, remat=True)
    assert scanned["params"]["single_transformer_blocks"]["block"]["proj_out"]["kernel"].shape == (2, 32 + 128, 32)
    for a, b in zip(jax.tree_util.tree_leaves(unstack_blocks(scanned, cfg)), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree_util.tree_structure(stack_blocks(variables, cfg)) == jax.tree_util.tree_structure(scanned)
    for k, v in to_diffusers(cfg_s, scanned).items():       # the scanned layout exports too
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    inp = inputs(5)
    ours = run_ours(cfg_s, scanned, inp)
    assert rel_err(ours, run_ours(cfg, variables, inp)) <= 1e-6
    assert rel_err(ours, run_reference(model, inp)) <= 1e-5


def test_preset_parameter_counts_from_abstract_shapes():
    from configs.flux import get_config
    from mmdit_jax.families import model_config

    counts = {name: num_parameters(abstract_variables(model_config(get_config(name)))["params"])
              for name in ("dev", "schnell")}
    assert counts == {"dev": 11_901_408_320, "schnell": 11_891_178_560}
    assert model_config(get_config("dev")) == FluxConfig()
