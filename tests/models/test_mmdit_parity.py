"""Parity with diffusers' SD3Transformer2DModel (PyTorch CPU, fp32) on random weights converted by our converter."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mmdit_jax.interop.sd3 import diffusers_to_original, load_sd3, to_diffusers  # noqa: E402
from mmdit_jax.models.mmdit import MMDiT  # noqa: E402
from mmdit_jax.models.mmdit_params import stack_blocks, unstack_blocks  # noqa: E402
from tests.torch_reference import numpy_state, randomize  # noqa: E402

TINY = dict(sample_size=32, patch_size=1, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
            pos_embed_max_size=96)
TINY_SD3 = dict(TINY, dual_attention_layers=(), qk_norm=None)
TINY_SD35 = dict(TINY, dual_attention_layers=(0,), qk_norm="rms_norm")


def reference_model(config, seed=0):
    """A diffusers model whose every parameter (norm weights and biases included) is random.

    Weights are N(0, 1/fan_in) so activations stay O(1) through the blocks; gates and modulations are
    far from zero, so every path contributes to the output.
    """
    torch.manual_seed(seed)
    model = diffusers.SD3Transformer2DModel(**config).eval()
    return randomize(model)


def inputs(seed, batch=2, height=32, width=32, channels=4, tokens=154, width_ctx=32, pooled=64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, channels, height, width), np.float32),
            rng.uniform(0, 1000, batch).astype(np.float32),
            rng.standard_normal((batch, tokens, width_ctx), np.float32),
            rng.standard_normal((batch, pooled), np.float32))


def run_reference(model, x, t, c, y, skip_layers=None):
    with torch.no_grad():
        out = model(hidden_states=torch.from_numpy(x), encoder_hidden_states=torch.from_numpy(c),
                    pooled_projections=torch.from_numpy(y), timestep=torch.from_numpy(t),
                    skip_layers=skip_layers).sample
    return out.numpy()


def run_ours(cfg, variables, x, t, c, y, skip_layers=()):
    out = MMDiT(cfg).apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), jnp.asarray(c),
                           jnp.asarray(y), skip_layers=tuple(skip_layers))
    return np.asarray(out).transpose(0, 3, 1, 2)


def rel_err(a, ref):
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("config", [TINY_SD3, TINY_SD35], ids=["sd3", "sd3.5"])
def test_output_equals_diffusers_to_1e5(config):
    model = reference_model(config)
    cfg, variables = load_sd3(numpy_state(model), head_dim=8)
    assert cfg.dual_attention_layers == tuple(config["dual_attention_layers"])
    assert cfg.qk_norm == config["qk_norm"]
    for seed, (h, w) in [(0, (32, 32)), (1, (24, 40)), (2, (16, 8))]:   # square and non-square inputs
        x, t, c, y = inputs(seed, height=h, width=w)
        t[0] = 0.0 if seed == 0 else t[0]                                 # includes the timestep end point
        ref = run_reference(model, x, t, c, y)
        assert rel_err(run_ours(cfg, variables, x, t, c, y), ref) <= 1e-5


def test_timestep_frequencies_are_torch_float32_exponent_correctly_rounded():
    """diffusers forms the exponent in float32, then takes a float32 exp; ours rounds the exact exp of that exponent.

    torch's float32 exp is not correctly rounded either: at most 2 of the 128 frequencies differ by one ulp (a float32
    XLA exp of the same exponent misses 17).
    """
    from diffusers.models.embeddings import get_timestep_embedding

    from mmdit_jax.models.embeddings import timestep_features, timestep_frequencies

    half = 128
    exponent = -np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half
    ref = torch.exp(exponent).numpy()
    ours = timestep_frequencies(256)
    ulps = np.abs(ours.view(np.int32) - ref.view(np.int32))
    assert ulps.max() <= 1 and (ulps > 0).sum() <= 2, (ulps > 0).sum()
    # features at the frequencies both agree on: within one float32 ulp of sin/cos
    t = np.linspace(0, 1000, 57).astype(np.float32)
    feats = np.asarray(timestep_features(jnp.asarray(t)))
    ref_feats = get_timestep_embedding(torch.from_numpy(t), 256, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
    same = np.concatenate([ulps == 0, ulps == 0])
    assert np.max(np.abs(feats - ref_feats)[:, same]) <= 6e-8


@pytest.mark.parametrize("config", [TINY_SD3, TINY_SD35], ids=["sd3", "sd3.5"])
def test_output_equals_diffusers_at_every_timestep_of_a_28_step_schedule(config):
    """Large t is where a frequency's rounding matters most (t f_k up to 1000 rad)."""
    from mmdit_jax.diffusion.flow_match import flow_match_schedule

    timesteps = np.asarray(flow_match_schedule(28, {"shift": 3.0})[1], np.float32)
    model = reference_model(config, seed=4)
    cfg, variables = load_sd3(numpy_state(model), head_dim=8)
    x, _, c, y = inputs(5, batch=len(timesteps), height=16, width=24)
    ref = run_reference(model, x, timesteps, c, y)
    ours = run_ours(cfg, variables, x, timesteps, c, y)
    errors = [rel_err(ours[i], ref[i]) for i in range(len(timesteps))]
    assert max(errors) <= 1e-5, np.round(np.array(errors) * 1e6, 2)


@pytest.mark.parametrize("config", [TINY_SD3, TINY_SD35], ids=["sd3", "sd3.5"])
def test_skip_layers_equal_diffusers(config):
    model = reference_model(config, seed=1)
    cfg, variables = load_sd3(numpy_state(model), head_dim=8)
    x, t, c, y = inputs(3)
    for skip in ([1], [0, 2]):
        ref = run_reference(model, x, t, c, y, skip_layers=skip)
        assert rel_err(run_ours(cfg, variables, x, t, c, y, skip), ref) <= 1e-5
        if skip == [1]:  # the skip matters: output differs from the full model
            assert rel_err(run_ours(cfg, variables, x, t, c, y), ref) > 1e-3


def test_original_key_layout_gives_the_same_outputs():
    model = reference_model(TINY_SD35, seed=2)
    sd = numpy_state(model)
    original = {"model.diffusion_model." + k: v for k, v in diffusers_to_original(sd).items()}
    assert any(k.endswith("x_block.attn.qkv.weight") for k in original)
    cfg_a, var_a = load_sd3(sd, head_dim=8)
    cfg_b, var_b = load_sd3(original, head_dim=8)
    assert cfg_a == cfg_b
    x, t, c, y = inputs(4)
    np.testing.assert_array_equal(run_ours(cfg_a, var_a, x, t, c, y), run_ours(cfg_b, var_b, x, t, c, y))


@pytest.mark.parametrize("config", [TINY_SD3, TINY_SD35], ids=["sd3", "sd3.5"])
def test_flax_to_diffusers_to_flax_round_trip_is_exact(config, tmp_path):
    model = reference_model(config, seed=3)
    cfg, variables = load_sd3(numpy_state(model), head_dim=8)
    exported = to_diffusers(cfg, variables)
    assert set(exported) == set(model.state_dict())
    # the export loads into diffusers itself
    model2 = diffusers.SD3Transformer2DModel(**config)
    model2.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()})
    _, again = load_sd3(exported, head_dim=8)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, again)
    # and through a diffusers folder on disk (config.json + safetensors)
    model.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    cfg_disk, from_disk = load_sd3(tmp_path)
    assert cfg_disk.head_dim == 8 and cfg_disk.num_layers == 4
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, from_disk)


def test_scan_and_remat_give_the_unrolled_result():
    model = reference_model(TINY_SD35, seed=4)
    cfg, variables = load_sd3(numpy_state(model), head_dim=8)
    x, t, c, y = inputs(5)
    base = run_ours(cfg, variables, x, t, c, y, skip_layers=[1])
    scan_cfg, scan_vars = load_sd3(numpy_state(model), head_dim=8, scan_blocks=True, remat=True)
    assert "scan_1_3" in scan_vars["params"]
    # same maths; XLA may fuse the scanned body differently, so equal up to float32 rounding
    assert rel_err(run_ours(scan_cfg, scan_vars, x, t, c, y, skip_layers=[1]), base) <= 1e-6
    assert rel_err(run_ours(scan_cfg, stack_blocks(variables, scan_cfg), x, t, c, y, [1]), base) <= 1e-6
    # two blocks per scan iteration (scan_unroll): same parameters, same result, the skip mask still honoured
    unroll_cfg = dataclasses.replace(scan_cfg, scan_unroll=2, remat=False)
    assert rel_err(run_ours(unroll_cfg, scan_vars, x, t, c, y, skip_layers=[1]), base) <= 1e-6
    np.testing.assert_array_equal(unstack_blocks(scan_vars, scan_cfg)["params"]["transformer_blocks_2"]["norm1"]["kernel"],
                                  variables["params"]["transformer_blocks_2"]["norm1"]["kernel"])
