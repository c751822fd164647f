"""The KL autoencoder against diffusers' AutoencoderKL (PyTorch CPU, fp32, random weights), its checkpoint
layouts, presets and bad input."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs.vae import get_config  # noqa: E402
from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.interop.safetensors_io import save_state_dict  # noqa: E402
from mmdit_jax.interop.vae import (  # noqa: E402
    diffusers_to_ldm,
    ldm_to_diffusers,
    load_vae,
    to_diffusers,
)
from mmdit_jax.models.vae import (  # noqa: E402
    AutoencoderKL,
    VAEConfig,
    count_params,
    denormalize_latents,
    normalize_latents,
)
from tests.torch_reference import numpy_state, randomize  # noqa: E402

# Two tiny layouts: SD3/FLUX-like (16 latent channels, no quant convs, GroupNorm 32) and SDXL-like (4 latent
# channels, quant convs, three stages so the decoder's reversed stage numbering is exercised).
CONFIGS = {
    "latent16": dict(latent_channels=16, block_out_channels=(32, 64), norm_num_groups=32, use_quant_conv=False,
                     use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609),
    "latent4_quant": dict(latent_channels=4, block_out_channels=(16, 32, 32), norm_num_groups=8,
                          use_quant_conv=True, use_post_quant_conv=True, scaling_factor=0.13025, shift_factor=None),
}
BATCH, HEIGHT, WIDTH = 3, 16, 24                 # non-square on purpose
SCALINGS = dict(scaling_factor=1.5305, shift_factor=0.0609)


def reference_model(name, seed=0):
    """diffusers' AutoencoderKL with every parameter random (N(0, 1/fan_in) weights, norm scales near 1)."""
    n = len(CONFIGS[name]["block_out_channels"])
    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(in_channels=3, out_channels=3, layers_per_block=1,
                                    down_block_types=("DownEncoderBlock2D",) * n,
                                    up_block_types=("UpDecoderBlock2D",) * n, **CONFIGS[name]).eval()
    return randomize(model, norm_scale=lambda name: "norm" in name and name.endswith("weight"))


def rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


@dataclasses.dataclass
class Built:
    model: object                # the diffusers reference
    sd: dict
    cfg: VAEConfig
    variables: dict
    encode: object               # jitted (variables, x NHWC) -> (mean, logvar)
    decode: object               # jitted (variables, z NHWC) -> x
    x: np.ndarray                # NCHW images in [-1, 1]
    z: np.ndarray                # NCHW latents


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = {}
    for i, name in enumerate(CONFIGS):
        model = reference_model(name, seed=i)
        root = tmp_path_factory.mktemp(name)
        model.save_pretrained(root / "vae", safe_serialization=True)     # a pipeline folder: vae/ inside
        cfg, variables = load_vae(root)
        vae = AutoencoderKL(cfg)
        # The 4-channel model runs its batch of 3 two at a time (the last chunk padded).
        chunk = 2 if cfg.use_quant_conv else None
        encode = jax.jit(lambda v, x, vae=vae, chunk=chunk: vae.apply(v, x, chunk_size=chunk, method="encode"))
        decode = jax.jit(lambda v, z, vae=vae, chunk=chunk: vae.apply(v, z, chunk_size=chunk, method="decode"))
        rng = np.random.default_rng(i)
        f = cfg.downscale
        x = rng.uniform(-1, 1, (BATCH, 3, HEIGHT, WIDTH)).astype(np.float32)
        z = rng.standard_normal((BATCH, cfg.latent_channels, HEIGHT // f, WIDTH // f)).astype(np.float32)
        out[name] = Built(model, numpy_state(model), cfg, variables, encode, decode, x, z)
    return out


def nhwc(a):
    return jnp.asarray(a.transpose(0, 2, 3, 1))


def nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", CONFIGS)
def test_encode_and_decode_equal_diffusers_to_1e5(built, name):
    b = built[name]
    expected = {k: v for k, v in CONFIGS[name].items() if k in VAEConfig.__dataclass_fields__}
    assert {k: getattr(b.cfg, k) for k in expected} == expected       # inferred from weights + config.json
    with torch.no_grad():
        posterior = b.model.encode(torch.from_numpy(b.x)).latent_dist
        ref_mean, ref_logvar = posterior.mean.numpy(), posterior.logvar.numpy()
        ref_x = b.model.decode(torch.from_numpy(b.z)).sample.numpy()
    mean, logvar = b.encode(b.variables, nhwc(b.x))
    assert nchw(mean).shape == ref_mean.shape == (BATCH, b.cfg.latent_channels, HEIGHT // b.cfg.downscale,
                                                  WIDTH // b.cfg.downscale)
    assert rel_err(nchw(mean), ref_mean) <= 1e-5
    assert rel_err(nchw(logvar), ref_logvar) <= 1e-5
    out = b.decode(b.variables, nhwc(b.z))
    assert nchw(out).shape == ref_x.shape == (BATCH, 3, HEIGHT, WIDTH)
    assert rel_err(nchw(out), ref_x) <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_ldm_layout_round_trip_is_exact_and_matches_diffusers_converter(built, name):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    sd = built[name].sd
    ldm = diffusers_to_ldm(sd)
    n = len(CONFIGS[name]["block_out_channels"])
    assert f"decoder.up.{n - 1}.block.0.conv1.weight" in ldm and "encoder.mid.attn_1.q.weight" in ldm
    assert ldm["decoder.mid.attn_1.proj_out.weight"].shape[2:] == (1, 1)
    assert "encoder.down.1.block.0.nin_shortcut.weight" in ldm
    back = ldm_to_diffusers(ldm)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k
    # diffusers' own single-file converter reads our LDM layout as the same state dict
    theirs = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ldm.items()},
                                        {"down_block_types": [None] * n, "up_block_types": [None] * n})
    assert set(theirs) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(np.asarray(theirs[k]), sd[k], err_msg=k)


def test_every_layout_and_source_loads_the_same_variables_and_outputs(built, tmp_path):
    b = built["latent16"]
    ldm = diffusers_to_ldm(b.sd)
    # a single-file SD3 checkpoint: the autoencoder under first_stage_model., other models' keys beside it
    single = {**{f"first_stage_model.{k}": v for k, v in ldm.items()},
              "model.diffusion_model.x_embedder.proj.bias": np.zeros(4, np.float32)}
    save_state_dict(single, tmp_path / "sd3_single_file.safetensors")
    legacy = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
               .replace("to_out.0.", "proj_attn."): v for k, v in b.sd.items()}
    legacy = {k: v[:, :, None, None] if "proj_attn.weight" in k else v for k, v in legacy.items()}
    sources = {"ldm": ldm, "ldm_prefixed": single, "file": tmp_path / "sd3_single_file.safetensors",
               "legacy_attention_names": legacy, "diffusers_state_dict": b.sd}
    ref_mean, _ = b.encode(b.variables, nhwc(b.x))
    ref_out = b.decode(b.variables, nhwc(b.z))
    for label, source in sources.items():
        cfg, variables = load_vae(source, **SCALINGS)
        assert cfg == b.cfg, label
        jax.tree_util.tree_map(np.testing.assert_array_equal, variables, b.variables)
        if label in ("ldm", "ldm_prefixed"):
            np.testing.assert_array_equal(b.encode(variables, nhwc(b.x))[0], ref_mean)
            np.testing.assert_array_equal(b.decode(variables, nhwc(b.z)), ref_out)


@pytest.mark.parametrize("name", CONFIGS)
def test_export_loads_into_diffusers(built, name):
    b = built[name]
    exported = to_diffusers(b.cfg, b.variables)
    assert set(exported) == set(b.sd)
    model = diffusers.AutoencoderKL.from_config(b.model.config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    for k, v in numpy_state(model).items():
        np.testing.assert_array_equal(v, b.sd[k], err_msg=k)
    assert count_params(b.cfg) == sum(p.numel() for p in b.model.parameters())


def test_preset_parameter_counts():
    assert count_params(VAEConfig.from_dict(get_config("sd3"))) == 83_819_683
    assert count_params(VAEConfig.from_dict(get_config("sdxl"))) == 83_653_863
    flux = VAEConfig.from_dict(get_config("flux"))
    assert (flux.scaling_factor, flux.shift_factor) == (0.3611, 0.1159)
    assert VAEConfig.from_dict(get_config("sdxl")).shift_factor is None
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("sd2")


def test_latent_normalisation_is_the_pipeline_formula_and_inverts():
    z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 6, 16)), jnp.float32)
    sd3, sdxl = VAEConfig.from_dict(get_config("sd3")), VAEConfig.from_dict(get_config("sdxl"))
    np.testing.assert_allclose(normalize_latents(z, sd3), (z - 0.0609) * 1.5305, rtol=1e-6)
    np.testing.assert_allclose(normalize_latents(z, sdxl), z * 0.13025, rtol=1e-6)
    for cfg in (sd3, sdxl):
        np.testing.assert_allclose(denormalize_latents(normalize_latents(z, cfg), cfg), z, rtol=1e-5, atol=1e-6)


def test_bad_input_is_named(built):
    b = built["latent16"]
    missing = dict(b.sd)
    del missing["decoder.up_blocks.0.resnets.1.conv2.weight"]
    with pytest.raises(ConfigError, match=r"decoder\.up_blocks\.0\.resnets\.1\.conv2\.weight"):
        load_vae(missing, **SCALINGS)
    wrong = {**b.sd, "encoder.mid_block.attentions.0.to_q.weight": np.zeros((64, 32), np.float32)}
    with pytest.raises(ConfigError, match=r"encoder\.mid_block\.attentions\.0\.to_q\.weight has shape"):
        load_vae(wrong, **SCALINGS)
    with pytest.raises(ConfigError, match="encoder.conv_in.weight"):
        load_vae({k: v for k, v in b.sd.items() if k != "encoder.conv_in.weight"}, **SCALINGS)
    with pytest.raises(ConfigError, match="vae.scaling_factor"):
        load_vae(b.sd)
    with pytest.raises(ConfigError, match=r"\(B, H, W, 3\).*got shape \(3, 16, 24, 4\)"):
        b.encode(b.variables, jnp.zeros((BATCH, HEIGHT, WIDTH, 4)))
    with pytest.raises(ConfigError, match="vae.latent_channels=16"):
        b.decode(b.variables, jnp.zeros((BATCH, 8, 12, 4)))
    with pytest.raises(ConfigError, match=r"vae.block_out_channels\[0\]=30"):
        VAEConfig(block_out_channels=(30, 64)).validate()
    with pytest.raises(ConfigError, match="vae.dtype"):
        VAEConfig.from_dict({"dtype": "float64"})
