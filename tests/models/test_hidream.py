"""Flax HiDream-I1 transformer equals diffusers' ``HiDreamImageTransformer2DModel`` (fp32, random weights):
diffusers' test config and odd ones (2 and 4 experts, other Llama layer maps, square and padded non-square
latents); the dense mixture of experts equals the routed ``moe_infer``; converters both ways; the released size
from abstract shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.interop.hidream import from_diffusers, stack_blocks, to_diffusers  # noqa: E402
from mmdit_jax.models.flops import num_parameters  # noqa: E402
from mmdit_jax.models.hidream import (  # noqa: E402
    HiDreamConfig, HiDreamTransformer, abstract_variables, apply_latents,
)
from mmdit_jax.models.moe import MoEFeedForward, load_balancing_loss, swiglu_hidden  # noqa: E402
from tests.torch_reference import numpy_state, randomize  # noqa: E402

TOL = 1e-5   # relative: max |ours - diffusers| / max |diffusers|
BASE = dict(patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=4, caption_channels=[8, 4], text_emb_dim=8, num_routed_experts=4,
            num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1),
            force_inference_output=True)
CASES = {
    "test_config_4_experts": BASE,
    # diffusers' own model-test MoE (2 experts, both active); more blocks than Llama layers read, a repeated layer,
    # the last block not reading the last layer
    "2_experts_layer_map": {**BASE, "num_layers": 2, "num_single_layers": 2, "llama_layers": (2, 0, 2, 1),
                            "num_routed_experts": 2},
}


def _is_norm(name):
    return "rms_norm" in name


def _relative_error(ours, ref):
    return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


@functools.cache
def _built(name):
    """``(ref_model, cfg, variables, forward)`` of a case, built once per module: the jitted forward is shared."""
    kwargs = CASES[name]
    torch.manual_seed(0)
    ref_model = randomize(diffusers.HiDreamImageTransformer2DModel(**kwargs), seed=1, norm_scale=_is_norm)
    cfg = HiDreamConfig.from_diffusers(dict(ref_model.config))
    variables = from_diffusers(numpy_state(ref_model), cfg)
    model = HiDreamTransformer(cfg)
    forward = jax.jit(lambda v, x, t, t5, llama, pooled: apply_latents(model, v, x, t, t5, llama, pooled))
    return ref_model, cfg, variables, forward


def _inputs(cfg, height, width, seed=0):
    rng = np.random.default_rng(seed)
    layers = max(cfg.llama_layers) + 1
    return dict(latents=rng.standard_normal((2, height, width, cfg.in_channels)).astype(np.float32),
                t=np.array([137.0, 811.0], np.float32),
                t5=rng.standard_normal((2, 6, cfg.t5_dim)).astype(np.float32),
                llama=rng.standard_normal((layers, 2, 5, cfg.llama_dim)).astype(np.float32),
                pooled=rng.standard_normal((2, cfg.pooled_projection_dim)).astype(np.float32))


def _diffusers_forward(ref_model, x):
    with torch.no_grad():
        out = ref_model(hidden_states=torch.from_numpy(x["latents"]).permute(0, 3, 1, 2),
                        timesteps=torch.from_numpy(x["t"]), encoder_hidden_states_t5=torch.from_numpy(x["t5"]),
                        encoder_hidden_states_llama3=torch.from_numpy(x["llama"]),
                        pooled_embeds=torch.from_numpy(x["pooled"]), return_dict=False)[0]
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name,size", [("test_config_4_experts", (16, 16)), ("test_config_4_experts", (16, 8)),
                                       ("2_experts_layer_map", (16, 16))],
                         ids=["square", "non_square_padded", "2_experts_layer_map"])
def test_equals_diffusers(name, size):
    ref_model, cfg, variables, forward = _built(name)
    x = _inputs(cfg, *size)
    ref = _diffusers_forward(ref_model, x)
    ours = forward(variables, x["latents"], x["t"], x["t5"], x["llama"], x["pooled"])
    assert ours.shape == ref.shape == (2, *size, cfg.out_channels)
    err = _relative_error(ours, ref)
    print(f"{name} {size}: max abs {np.max(np.abs(np.asarray(ours) - ref)):.2e}, relative {err:.2e}")
    assert err <= TOL, err


def test_scanned_remat_equals_unrolled():
    # the config with several blocks of each kind
    ref_model, cfg, variables, forward = _built("2_experts_layer_map")
    scanned_cfg = HiDreamConfig(**{**cfg.__dict__, "scan_blocks": True, "remat": True})
    scanned = stack_blocks(variables, cfg)
    x = _inputs(cfg, 16, 16, seed=3)
    args = (x["latents"], x["t"], x["t5"], x["llama"], x["pooled"])
    out = jax.jit(lambda v, *a: apply_latents(HiDreamTransformer(scanned_cfg), v, *a))(scanned, *args)
    np.testing.assert_allclose(np.asarray(out), np.asarray(forward(variables, *args)), rtol=0, atol=1e-6)
    sd = to_diffusers(scanned_cfg, scanned)
    ref_sd = numpy_state(ref_model)
    assert sorted(sd) == sorted(ref_sd) and all(np.array_equal(sd[k], ref_sd[k]) for k in sd)


@pytest.mark.parametrize("experts,top_k", [(2, 1), (4, 2)])
def test_dense_moe_equals_routed_moe_infer(experts, top_k):
    from diffusers.models.transformers.transformer_hidream_image import MOEFeedForwardSwiGLU

    d = 32
    torch.manual_seed(0)
    ref = randomize(MOEFeedForwardSwiGLU(d, 4 * d, experts, top_k), seed=5)
    assert not ref.training
    sd = numpy_state(ref)
    params = {"gate": {"kernel": sd["gate.weight"].T},
              "shared_experts": {n: {"kernel": sd[f"shared_experts.{n}.weight"].T} for n in ("w1", "w2", "w3")},
              "experts": {n: np.stack([sd[f"experts.{e}.{n}.weight"].T for e in range(experts)])
                          for n in ("w1", "w2", "w3")}}
    u = np.random.default_rng(1).standard_normal((2, 40, d)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(u)).numpy()
        chosen = ref.gate(torch.from_numpy(u))[0].numpy()
    module = MoEFeedForward(experts, top_k, swiglu_hidden(4 * d), swiglu_hidden(2 * d))
    got, state = module.apply({"params": params}, jnp.asarray(u), mutable=["router"])
    assert len(np.unique(chosen)) == experts                     # every expert routed some tokens
    np.testing.assert_array_equal(np.sort(np.asarray(state["router"]["top_indices"][0]).reshape(-1, top_k), -1),
                                  np.sort(chosen, -1))
    err = _relative_error(got, want)
    print(f"moe {experts}/{top_k}: max abs {np.max(np.abs(np.asarray(got) - want)):.2e}, relative {err:.2e}")
    assert err <= TOL, err
    loss = load_balancing_loss(state["router"]["scores"][0], state["router"]["top_indices"][0])
    assert np.isfinite(float(loss)) and float(loss) > 0


def test_released_size_from_abstract_shapes():
    # scanned: one block of each kind traced, the same shapes stacked
    n = num_parameters(abstract_variables(HiDreamConfig(scan_blocks=True))["params"])
    assert round(n / 1e9, 2) == 17.11, n


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="llama_layers"):
        HiDreamConfig(llama_layers=(0, 1)).validate()
    with pytest.raises(ConfigError, match="num_activated_experts"):
        HiDreamConfig(num_activated_experts=5).validate()
    with pytest.raises(ConfigError, match="axes_dims_rope"):
        HiDreamConfig(axes_dims_rope=(64, 32, 30)).validate()
