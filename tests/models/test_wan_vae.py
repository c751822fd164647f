"""The Wan 2.1 causal video VAE against diffusers' AutoencoderKLWan (PyTorch CPU, fp32, random weights): encode and
decode for 1 and 1 + 4 k frames, the one-frame 2D reduction, causality, the diffusers folder round trip, bad input."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax.traverse_util import flatten_dict, unflatten_dict  # noqa: E402

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.components.codec import CODECS, WanCodec  # noqa: E402
from mmdit_jax.interop.wan_vae import (  # noqa: E402
    config_from_diffusers,
    from_diffusers,
    load_wan_vae,
    save_wan_vae,
)
from mmdit_jax.models.wan_vae import (  # noqa: E402
    AutoencoderKLWan,
    WanVAEConfig,
    count_params,
    denormalize_latents,
    normalize_latents,
)
from tests.torch_reference import numpy_state, randomize  # noqa: E402

# diffusers' own test config (tests/models/autoencoders/test_models_autoencoder_wan.py: three channels, four stages,
# time halved twice) and an odd one: non-square frames, widths 8/16/24, two resnets per stage, time halved at the
# first downsampling instead of the later ones, 4 latent channels with their own statistics.
CONFIGS = {
    "diffusers_test": (dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]), (16, 16)),
    "odd": (dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 3], num_res_blocks=2, temperal_downsample=[True, False],
                 latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0]), (16, 24)),
}
FRAMES = (1, 5, 9)                      # 1 + 4 k, k = 0, 1, 2
BATCH = 2
# Less LLVM optimisation: the same operations, compiled in a third of the time (these programs run in milliseconds).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def rel_err(a, ref):
    return float(np.max(np.abs(np.asarray(a) - ref)) / np.max(np.abs(ref)))


def to_ncthw(a):
    return np.asarray(a).transpose(0, 4, 1, 2, 3)


def to_nthwc(a):
    return jnp.asarray(a.transpose(0, 2, 3, 4, 1))


@dataclasses.dataclass
class Built:
    model: object                       # the diffusers reference
    sd: dict
    cfg: WanVAEConfig
    variables: dict
    hw: tuple[int, int]
    programs: dict = dataclasses.field(default_factory=dict)

    def run(self, method, variables, a):
        """``encode`` / ``decode`` compiled once per input shape."""
        key = (method, a.shape)
        if key not in self.programs:
            vae = AutoencoderKLWan(self.cfg)
            fn = jax.jit(lambda v, x: vae.apply(v, x, method=method))
            self.programs[key] = fn.lower(variables, a).compile(compiler_options=FAST_COMPILE)
        return self.programs[key](variables, a)

    def video(self, frames, seed=0):
        rng = np.random.default_rng(seed + frames)
        return rng.uniform(-1, 1, (BATCH, 3, frames, *self.hw)).astype(np.float32)

    def latents(self, frames, seed=0):
        f = self.cfg.spatial_downscale
        shape = (BATCH, self.cfg.z_dim, self.cfg.latent_frames(frames), self.hw[0] // f, self.hw[1] // f)
        return np.random.default_rng(seed + 100 + frames).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = {}
    for i, (name, (kwargs, hw)) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        model = randomize(diffusers.AutoencoderKLWan(**kwargs), norm_scale=lambda n: n.endswith("gamma"))
        with torch.no_grad():               # outputs mostly inside [-1, 1], where the final clip keeps them
            model.decoder.conv_out.weight.mul_(0.3)
            model.decoder.conv_out.bias.mul_(0.3)
        root = tmp_path_factory.mktemp(name)
        model.save_pretrained(root / "vae", safe_serialization=True)         # a pipeline folder: vae/ inside
        cfg, variables = load_wan_vae(root)
        out[name] = Built(model, numpy_state(model), cfg, variables, hw)
    return out


@pytest.mark.parametrize("frames", FRAMES)
@pytest.mark.parametrize("name", CONFIGS)
def test_encode_and_decode_equal_diffusers_to_1e5(built, name, frames):
    b = built[name]
    kwargs = CONFIGS[name][0]
    assert b.cfg.temporal_downsample == tuple(kwargs["temperal_downsample"])
    assert (b.cfg.base_dim, b.cfg.z_dim, b.cfg.dim_mult) == (kwargs["base_dim"], kwargs["z_dim"],
                                                             tuple(kwargs["dim_mult"]))
    x, z = b.video(frames), b.latents(frames)
    with torch.no_grad():
        posterior = b.model.encode(torch.from_numpy(x)).latent_dist
        ref_mean, ref_logvar = posterior.mean.numpy(), posterior.logvar.numpy()
        ref_x = b.model.decode(torch.from_numpy(z)).sample.numpy()
    mean, logvar = b.run("encode", b.variables, to_nthwc(x))
    assert to_ncthw(mean).shape == ref_mean.shape == z.shape
    assert ref_mean.shape[2] == 1 + (frames - 1) // b.cfg.temporal_downscale
    out = to_ncthw(b.run("decode", b.variables, to_nthwc(z)))
    assert out.shape == ref_x.shape == x.shape
    assert np.mean(np.abs(ref_x) < 1) > 0.9          # the clip to [-1, 1] hides little of the comparison
    errors = dict(mean=rel_err(to_ncthw(mean), ref_mean), logvar=rel_err(to_ncthw(logvar), ref_logvar),
                  decode=rel_err(out, ref_x))
    print(name, frames, errors)
    assert max(errors.values()) <= 1e-5, errors


def _past_taps_and_time_convs_replaced(variables, seed):
    """Every causal kernel's taps but the last time slice, and every time_conv, replaced with noise."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, w in flatten_dict(variables["params"]).items():
        w = np.array(w)
        if "time_conv" in path:
            w = rng.standard_normal(w.shape).astype(w.dtype)
        elif w.ndim == 5 and w.shape[0] == 3:
            w[:-1] = rng.standard_normal(w[:-1].shape)
        flat[path] = jnp.asarray(w)
    return {"params": unflatten_dict(flat)}


@pytest.mark.parametrize("name", CONFIGS)
def test_one_frame_is_the_2d_vae_of_the_last_time_slices(built, name):
    """With one frame every causal convolution is the 2D convolution of its kernel's last time slice and no time
    convolution runs: the other taps and the time convolutions can be anything, the outputs do not change."""
    b = built[name]
    other = _past_taps_and_time_convs_replaced(b.variables, seed=7)
    x1, z1 = to_nthwc(b.video(1)), to_nthwc(b.latents(1))
    for got, want in ((b.run("encode", other, x1), b.run("encode", b.variables, x1)),
                      (b.run("decode", other, z1), b.run("decode", b.variables, z1))):
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    # with more frames the replaced weights do act (the statement above is not vacuous)
    x5 = to_nthwc(b.video(5))
    assert rel_err(b.run("encode", other, x5)[0], np.asarray(b.run("encode", b.variables, x5)[0])) > 1e-2


@pytest.mark.parametrize("name", CONFIGS)
def test_encode_and_decode_are_causal(built, name):
    """The first 1 + 4 j frames encode to the first latent frames of the whole video, and the first latent frames
    decode to its first frames: later frames never reach earlier outputs."""
    b = built[name]
    x9 = b.video(9)
    mean9, _ = b.run("encode", b.variables, to_nthwc(x9))
    mean5, _ = b.run("encode", b.variables, to_nthwc(x9[:, :, :5]))
    t5 = b.cfg.latent_frames(5)
    assert rel_err(mean5, np.asarray(mean9[:, :t5])) <= 1e-6
    z9 = b.latents(9)
    out9 = b.run("decode", b.variables, to_nthwc(z9))
    out5 = b.run("decode", b.variables, to_nthwc(z9[:, :, :t5]))
    assert out5.shape[1] == 5
    assert rel_err(out5, np.asarray(out9[:, :5])) <= 1e-6


@pytest.mark.parametrize("name", CONFIGS)
def test_export_is_a_diffusers_folder(built, name, tmp_path):
    b = built[name]
    save_wan_vae(b.cfg, b.variables, tmp_path)
    model = diffusers.AutoencoderKLWan.from_pretrained(tmp_path)
    for field in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample", "latents_mean",
                  "latents_std"):
        assert model.config[field] == b.model.config[field], field
    theirs = numpy_state(model)
    assert set(theirs) == set(b.sd)
    for k, v in theirs.items():
        np.testing.assert_array_equal(v, b.sd[k], err_msg=k)
    cfg, variables = load_wan_vae(tmp_path)
    assert cfg == b.cfg
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, b.variables)
    assert count_params(b.cfg) == sum(p.numel() for p in b.model.parameters())


def fast_jit(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def test_codec_is_the_normalised_vae_and_images_are_one_frame_videos(built):
    b = built["odd"]
    assert CODECS["wan"] is WanCodec
    codec = WanCodec(b.cfg, b.variables)
    assert (codec.downscale, codec.latent_channels) == (4, 4)
    video = to_nthwc(b.video(1))
    mean, _ = b.run("encode", b.variables, video)
    z_video = fast_jit(codec.encode, b.variables, video)
    np.testing.assert_allclose(z_video, normalize_latents(mean, b.cfg), rtol=1e-5, atol=1e-6)
    z_image = fast_jit(codec.encode, b.variables, video[:, 0])
    assert z_image.shape == (BATCH, 4, 6, 4)
    np.testing.assert_array_equal(z_image, z_video[:, 0])
    out = fast_jit(codec.decode, b.variables, z_image)
    assert out.shape == video[:, 0].shape
    expected = b.run("decode", b.variables, denormalize_latents(z_video, b.cfg))[:, 0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_released_architecture_and_ratios():
    cfg = WanVAEConfig()
    assert count_params(cfg) == 126_892_531               # diffusers' AutoencoderKLWan() counts the same
    assert (cfg.spatial_downscale, cfg.temporal_downscale) == (8, 4)
    assert cfg.latent_frames(81) == 21 and cfg.latent_frames(1) == 1


def test_latent_normalisation_is_per_channel_and_inverts():
    cfg = WanVAEConfig.from_dict(dict(base_dim=8, z_dim=2, dim_mult=[1, 2], temporal_downsample=[True],
                                      latents_mean=[1.0, -2.0], latents_std=[2.0, 0.5]))
    z = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4, 5, 2)), jnp.float32)
    expected = (z - jnp.asarray([1.0, -2.0])) / jnp.asarray([2.0, 0.5])
    np.testing.assert_allclose(normalize_latents(z, cfg), expected, rtol=1e-6)
    np.testing.assert_allclose(denormalize_latents(normalize_latents(z, cfg), cfg), z, rtol=1e-5, atol=1e-6)


def test_bad_input_is_named(built):
    b = built["odd"]
    bad = dict(base_dim=8, z_dim=2, dim_mult=(1, 2), latents_mean=(0.0, 0.0), latents_std=(1.0, 1.0))
    with pytest.raises(ConfigError, match="temporal_downsample"):
        WanVAEConfig.from_dict({**bad, "temporal_downsample": (True, True)})
    with pytest.raises(ConfigError, match="attn_scales"):
        WanVAEConfig.from_dict({**bad, "temporal_downsample": (True,), "attn_scales": (0.5,)})
    with pytest.raises(ConfigError, match="latents_mean"):
        WanVAEConfig.from_dict({**bad, "temporal_downsample": (True,), "latents_mean": (0.0,)})
    with pytest.raises(ConfigError, match="is_residual"):
        config_from_diffusers({**dict(b.model.config), "is_residual": True})
    missing = dict(b.sd)
    del missing["decoder.up_blocks.1.upsamplers.0.time_conv.weight"]
    with pytest.raises(ConfigError, match=r"decoder\.up_blocks\.1\.upsamplers\.0\.time_conv\.weight"):
        from_diffusers(missing, b.cfg)
    with pytest.raises(ConfigError, match="T = 1 \\+ 4 k"):
        AutoencoderKLWan(b.cfg).apply(b.variables, jnp.zeros((1, 4, 16, 16, 3)), method="encode")
