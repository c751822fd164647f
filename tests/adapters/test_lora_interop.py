"""LoRA files shared with diffusers / PEFT: ours loaded by diffusers and PEFT's loaded here give the same outputs
(tiny random SD3 and FLUX transformers, PyTorch CPU fp32, <= 1e-5), alpha != rank included; the key mapping round
trips in both block layouts; keys the model lacks are named."""

import copy
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

import jax  # noqa: E402

from mmdit_jax.adapters.lora import ATTENTION_TARGETS, LoraConfig, adapter_paths, delta, init_lora, merge  # noqa: E402
from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.families import get_family  # noqa: E402
from mmdit_jax.interop.flux import load_flux  # noqa: E402
from mmdit_jax.interop.lora import (  # noqa: E402
    WEIGHT_NAME, from_diffusers_lora, load_lora, save_lora, to_diffusers_lora,
)
from mmdit_jax.interop.sd3 import load_sd3  # noqa: E402
from mmdit_jax.models import mmdit_params  # noqa: E402
from mmdit_jax.models.flux import FluxTransformer, latent_image_ids, pack_latents, text_ids  # noqa: E402
from mmdit_jax.models.mmdit import MMDiT  # noqa: E402
from tests.torch_reference import numpy_state, randomize  # noqa: E402

SD3 = dict(sample_size=8, patch_size=1, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
           caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=16, out_channels=4,
           pos_embed_max_size=16, dual_attention_layers=(), qk_norm=None)
FLUX = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=True,
            axes_dims_rope=(2, 2, 4))
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


@pytest.fixture(scope="module")
def sd3():
    model = randomize(diffusers.SD3Transformer2DModel(**SD3), seed=0)
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((2, 4, 8, 8), np.float32), np.array([0.0, 640.0], np.float32),
              rng.standard_normal((2, 5, 16), np.float32), rng.standard_normal((2, 16), np.float32))
    return model, inputs, {scan: load_sd3(numpy_state(model), head_dim=8, scan_blocks=scan) for scan in (False, True)}


@pytest.fixture(scope="module")
def flux():
    model = randomize(diffusers.FluxTransformer2DModel(**FLUX), seed=1)
    rng = np.random.default_rng(1)
    inputs = dict(latents=rng.standard_normal((2, 4, 6, 4), np.float32), t=np.array([1.0, 0.3], np.float32),
                  context=rng.standard_normal((2, 5, 16), np.float32), pooled=rng.standard_normal((2, 16), np.float32),
                  guidance=np.array([3.5, 1.0], np.float32))
    sd = numpy_state(model)
    return model, inputs, {scan: load_flux(sd, axes_dims_rope=(2, 2, 4), scan_blocks=scan) for scan in (False, True)}


def sd3_reference(model, inputs):
    x, t, c, y = (torch.from_numpy(a) for a in inputs)
    with torch.no_grad():
        return model(hidden_states=x, encoder_hidden_states=c, pooled_projections=y, timestep=t).sample.numpy()


@functools.partial(jax.jit, static_argnums=0)
def _sd3_apply(cfg, variables, adapter, scale, x, t, c, y):
    params = variables["params"] if adapter is None else merge(variables["params"], adapter, scale)
    return MMDiT(cfg).apply({**variables, "params": params}, x, t, c, y)


def sd3_ours(cfg, variables, inputs, adapter=None, scale=1.0):
    """Our output with the adapter merged (None: the base model)."""
    x, t, c, y = inputs
    return np.asarray(_sd3_apply(cfg, variables, adapter, scale, x.transpose(0, 2, 3, 1), t, c, y)).transpose(0, 3, 1, 2)


def flux_reference(model, inp):
    _, h, w, _ = inp["latents"].shape
    tokens = diffusers.FluxPipeline._pack_latents(torch.from_numpy(inp["latents"].transpose(0, 3, 1, 2)), 2, 4, h, w)
    with torch.no_grad():
        return model(hidden_states=tokens, encoder_hidden_states=torch.from_numpy(inp["context"]),
                     pooled_projections=torch.from_numpy(inp["pooled"]), timestep=torch.from_numpy(inp["t"]),
                     img_ids=torch.from_numpy(latent_image_ids(h, w)), txt_ids=torch.from_numpy(text_ids(5)),
                     guidance=torch.from_numpy(inp["guidance"])).sample.numpy()


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _flux_apply(cfg, variables, adapter, scale, inp, height, width):
    params = variables["params"] if adapter is None else merge(variables["params"], adapter, scale)
    return FluxTransformer(cfg).apply({**variables, "params": params}, pack_latents(inp["latents"]), inp["t"],
                                      inp["context"], inp["pooled"], latent_image_ids(height, width), text_ids(5),
                                      inp["guidance"])


def flux_ours(cfg, variables, inp, adapter=None, scale=1.0):
    _, h, w, _ = inp["latents"].shape
    return np.asarray(_flux_apply(cfg, variables, adapter, scale, inp, h, w))


def rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def random_adapter(params, config, seed):
    """Both factors random (a trained adapter), not the zero-B initialisation."""
    shapes = jax.eval_shape(lambda: init_lora(jax.random.PRNGKey(0), params, config))   # no per-shape compiles
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: 0.4 * rng.standard_normal(x.shape, np.float32), shapes)


def lora_layers(model):
    return sum(1 for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer))


def to_torch(sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def peft_state(model, prefix=""):
    sd = peft.utils.get_peft_model_state_dict(model)
    return {prefix + k: v.detach().clone() for k, v in sd.items()}


def test_sd3_lora_saved_here_loads_in_diffusers_with_our_merged_output(sd3, tmp_path):
    base, inputs, configs = sd3
    cfg, variables = configs[True]                                 # scanned: exported through unstack_blocks
    lora = LoraConfig(rank=2, alpha=3.0, targets=(*ATTENTION_TARGETS, "proj_in", "proj_out"))
    adapter = random_adapter(variables["params"], lora, seed=0)
    sd = to_diffusers_lora(get_family("sd3"), cfg, adapter, lora.scale)
    assert sd["transformer.transformer_blocks.1.attn.to_out.0.lora_A.weight"].shape == (2, 16)
    assert sd["transformer.transformer_blocks.0.ff_context.net.2.lora_B.weight"].shape == (16, 2)
    file = save_lora(tmp_path, sd)
    assert file == str(tmp_path / WEIGHT_NAME)

    # what pipe.load_lora_weights(folder) does, without building a pipeline
    state, metadata = diffusers.StableDiffusion3Pipeline.lora_state_dict(str(tmp_path), return_lora_metadata=True)
    model = copy.deepcopy(base)
    diffusers.StableDiffusion3Pipeline.load_lora_into_transformer(state, transformer=model, metadata=metadata)
    assert lora_layers(model) == len(sd) // 2 > len(adapter_paths(adapter))    # a stacked path holds 2 modules
    ref = sd3_reference(model, inputs)
    ours = sd3_ours(cfg, variables, inputs, adapter, lora.scale)
    assert rel_err(ours, ref) <= 1e-5
    assert rel_err(sd3_ours(cfg, variables, inputs), ref) > 1e-3    # the LoRA matters


def test_flux_lora_made_here_loads_in_diffusers_with_our_merged_output(flux):
    base, inp, configs = flux
    cfg, variables = configs[False]
    lora = LoraConfig(rank=3, alpha=1.5, targets=(*ATTENTION_TARGETS, "proj_mlp"))
    adapter = random_adapter(variables["params"], lora, seed=2)
    sd = to_diffusers_lora(get_family("flux"), cfg, adapter, lora.scale)
    assert "transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight" in sd
    model = copy.deepcopy(base)
    model.load_lora_adapter(to_torch(sd), prefix="transformer")    # in memory: diffusers assumes alpha = r
    assert lora_layers(model) == len(adapter_paths(adapter)) == len(sd) // 2
    ref = flux_reference(model, inp)
    assert rel_err(flux_ours(cfg, variables, inp, adapter, lora.scale), ref) <= 1e-5
    assert rel_err(flux_ours(cfg, variables, inp), ref) > 1e-3


def test_sd3_peft_lora_saved_by_diffusers_loads_here_with_its_alpha(sd3, tmp_path):
    base, inputs, configs = sd3
    cfg, variables = configs[False]
    model = copy.deepcopy(base)
    model.add_adapter(peft.LoraConfig(r=2, lora_alpha=5, init_lora_weights=False,
                                      target_modules=[*PEFT_TARGETS, "ff.net.0.proj", "ff_context.net.2"]))
    diffusers.StableDiffusion3Pipeline.save_lora_weights(
        tmp_path, transformer_lora_layers=peft_state(model),
        transformer_lora_adapter_metadata=model.peft_config["default"].to_dict())
    ref = sd3_reference(model, inputs)
    sd, metadata = load_lora(tmp_path)
    assert all(k.startswith("transformer.") for k in sd) and "lora_adapter_metadata" in metadata
    adapter, scale = from_diffusers_lora(get_family("sd3"), cfg, sd, metadata)
    assert scale == 2.5                                            # one alpha: kept as the scale, factors as stored
    np.testing.assert_array_equal(adapter["transformer_blocks_0"]["attn"]["to_q"]["lora_A"],
                                  sd["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"].T)
    assert rel_err(sd3_ours(cfg, variables, inputs, adapter, scale), ref) <= 1e-5
    adapter, scale = from_diffusers_lora(get_family("sd3"), cfg, sd)          # without the metadata, alpha = r
    assert scale == 1.0
    assert rel_err(sd3_ours(cfg, variables, inputs, adapter, scale), ref) > 1e-3


def test_flux_peft_lora_with_alpha_and_rank_patterns_loads_into_a_scanned_model(flux):
    base, inp, configs = flux
    cfg, variables = configs[True]
    model = copy.deepcopy(base)
    config = peft.LoraConfig(r=2, lora_alpha=5, alpha_pattern={"to_k": 7}, rank_pattern={"proj_mlp": 3},
                             init_lora_weights=False, target_modules=[*PEFT_TARGETS, "proj_mlp"])
    model.add_adapter(config)
    ref = flux_reference(model, inp)
    sd = {k: v.numpy() for k, v in peft_state(model).items()}     # no "transformer." prefix
    assert sd["single_transformer_blocks.0.proj_mlp.lora_A.weight"].shape == (3, 16)
    adapter, scale = from_diffusers_lora(get_family("flux"), cfg, sd, model.peft_config["default"].to_dict())
    assert scale == 1.0                                            # scales differ: each folded into its B
    assert adapter["single_transformer_blocks"]["block"]["proj_mlp"]["lora_A"].shape == (2, 16, 3)
    assert rel_err(flux_ours(cfg, variables, inp, adapter, scale), ref) <= 1e-5


@pytest.mark.parametrize("family,scan", [("sd3", False), ("sd3", True), ("flux", True)])
@pytest.mark.parametrize("alpha", [None, 6.0])
def test_round_trip_through_diffusers_keys(family, scan, alpha, sd3, flux):
    cfg, variables = (sd3 if family == "sd3" else flux)[2][scan]
    lora = LoraConfig(rank=4, alpha=alpha, targets=(*ATTENTION_TARGETS, "proj_in", "proj_mlp"))
    adapter = random_adapter(variables["params"], lora, seed=3)
    family = get_family(family)
    back, scale = from_diffusers_lora(family, cfg, to_diffusers_lora(family, cfg, adapter, lora.scale))
    assert scale == 1.0 and sorted(adapter_paths(back)) == sorted(adapter_paths(adapter))
    for path in adapter_paths(adapter):
        ours, theirs = adapter, back
        for part in path:
            ours, theirs = ours[part], theirs[part]
        np.testing.assert_array_equal(theirs["lora_A"], ours["lora_A"])
        np.testing.assert_array_equal(theirs["lora_B"], np.float32(lora.scale) * np.asarray(ours["lora_B"]))


def test_a_lora_of_some_blocks_of_a_stacked_run_is_padded_with_zeros(sd3):
    """Blocks 0 and 1 are one scanned run: block 0 adapts to_q at rank 2, block 1 to_k at rank 1."""
    cfg_unrolled, _ = sd3[2][False]
    cfg, _ = sd3[2][True]
    rng = np.random.default_rng(4)
    sd = {f"transformer_blocks.{i}.attn.{m}.lora_{ab}.weight": rng.standard_normal(shape, np.float32)
          for i, m, r in ((0, "to_q", 2), (1, "to_k", 1)) for ab, shape in (("A", (r, 16)), ("B", (16, r)))}
    sd["transformer_blocks.1.attn.to_k.alpha"] = np.float32(3.0)  # kohya-style: folded, scale 1
    stacked, scale = from_diffusers_lora(get_family("sd3"), cfg, sd)
    unrolled, scale_unrolled = from_diffusers_lora(get_family("sd3"), cfg_unrolled, sd)
    assert scale == scale_unrolled == 1.0
    assert stacked["scan_0_2"]["block"]["attn"]["to_q"]["lora_A"].shape == (2, 16, 2)
    back = mmdit_params.unstack_blocks({"params": stacked}, cfg)["params"]
    for i, present, absent in ((0, "to_q", "to_k"), (1, "to_k", "to_q")):
        attn, ref = back[f"transformer_blocks_{i}"]["attn"], unrolled[f"transformer_blocks_{i}"]["attn"]
        assert set(ref) == {present}
        np.testing.assert_allclose(delta(attn[present], 1.0), delta(ref[present], 1.0), rtol=0, atol=0)
        assert not np.any(np.asarray(delta(attn[absent], 1.0)))
    np.testing.assert_array_equal(unrolled["transformer_blocks_1"]["attn"]["to_k"]["lora_B"],
                                  3.0 * sd["transformer_blocks.1.attn.to_k.lora_B.weight"].T)


def test_unknown_modules_and_families_are_named(sd3, tmp_path):
    cfg, _ = sd3[2][False]
    a, b = np.zeros((2, 16), np.float32), np.zeros((16, 2), np.float32)
    with pytest.raises(ConfigError, match=r"transformer_blocks\.7\.attn\.to_q.*transformer_blocks\.\{i\}\.attn\.to_q"):
        from_diffusers_lora(get_family("sd3"), cfg, {"transformer.transformer_blocks.7.attn.to_q.lora_A.weight": a,
                                         "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": b})
    with pytest.raises(ConfigError, match=r"single_transformer_blocks\.0\.proj_mlp"):
        from_diffusers_lora(get_family("sd3"), cfg, {"single_transformer_blocks.0.proj_mlp.lora_A.weight": a})
    with pytest.raises(ConfigError, match=r"transformer_blocks\.0\.attn\.to_q needs lora_A.*lora_B"):
        from_diffusers_lora(get_family("sd3"), cfg, {"transformer_blocks.0.attn.to_q.lora_A.weight": a})
    with pytest.raises(ConfigError, match=r"model.name='mlp' has no diffusers LoRA format"):
        to_diffusers_lora(get_family("mlp"), cfg, {}, 1.0)
    with pytest.raises(ConfigError, match=r"patch_embed"):
        to_diffusers_lora(get_family("sd3"), cfg, {"patch_embed": {"lora_A": a.T, "lora_B": b.T}}, 1.0)
    with pytest.raises(ConfigError, match=r"expected a \.safetensors file"):
        load_lora(tmp_path)


def test_the_layout_is_asked_of_the_family(sd3):
    """A family outside the package brings its own layout (``Family.lora_layout``): here an SD3 copy whose diffusers
    names say ``blocks`` for ``transformer_blocks``; families are taken as classes or instances."""
    from mmdit_jax.families.sd3 import SD3Family
    from mmdit_jax.interop.lora import LoraLayout

    class Renamed(SD3Family):
        name = "sd3_renamed"

        @classmethod
        def lora_layout(cls) -> LoraLayout:
            base = SD3Family.lora_layout()
            return base._replace(keys=lambda cfg: [k.replace("transformer_blocks.", "blocks.") for k in base.keys(cfg)],
                                 path=lambda key: base.path(key.replace("blocks.", "transformer_blocks.", 1)
                                                            if key.startswith("blocks.") else key))

    cfg, _ = sd3[2][False]
    adapter = init_lora(jax.random.PRNGKey(0), sd3[2][False][1]["params"], LoraConfig(rank=2))
    ours = to_diffusers_lora(get_family("sd3"), cfg, adapter, 1.0)
    renamed = to_diffusers_lora(Renamed, cfg, adapter, 1.0)
    assert sorted(renamed) == sorted(k.replace("transformer.transformer_blocks.", "transformer.blocks.") for k in ours)
    back, _ = from_diffusers_lora(Renamed(cfg, None), cfg, renamed)
    want = from_diffusers_lora(get_family("sd3"), cfg, ours)[0]
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(want)
