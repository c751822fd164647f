"""Two-scale (text + image) guidance against diffusers' StableDiffusionInstructPix2PixPipeline.

The oracle is the pipeline's own ``__call__`` run for one step with tiny fakes: a fake UNet (a fixed nonlinear
function of its 8-channel input and the text embeddings, so all three branches differ), a VAE stub that only
carries a config (4-channel ``image`` is used as latents directly, and ``output_type="latent"`` never decodes),
and a scheduler whose ``step`` records the guided noise prediction. Our wrapper runs the same function, written
once for both array libraries, on the same inputs.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.diffusion.guidance import classifier_free_guidance, two_scale_guidance

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

B, C, H, W, L, D = 2, 4, 6, 5, 7, 8
TIMESTEP = 637


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(C, 2 * C)).astype(np.float32) / 2,
            "b": rng.normal(size=(C,)).astype(np.float32),
            "v": rng.normal(size=(D, C)).astype(np.float32) / 2,
            "u": rng.normal(size=(D, C)).astype(np.float32) / 2}


def fake_unet(xp: Any, sample: Any, t: Any, text: Any, p: dict[str, Any]) -> Any:
    """sample: (N, 2C, H, W) (noisy latents then image latents), t: (N,), text: (N, L, D) -> (N, C, H, W).

    ``xp`` is ``torch`` or ``jax.numpy``. Image and text interact multiplicatively, so no branch of the guidance
    combination can stand in for another.
    """
    pooled = xp.tanh(text).mean(1)
    h = xp.einsum("oc,nchw->nohw", p["w"], sample) + p["b"][None, :, None, None]
    h = h + (pooled @ p["v"])[:, :, None, None]
    gate = 1.0 + (pooled @ p["u"])[:, :, None, None] * (1.0 + t[:, None, None, None] / 1000.0)
    return xp.tanh(h) * gate + 0.1 * h * h


class FakeUNet(torch.nn.Module):
    """What the pipeline reads from a UNet: ``config.in_channels``, ``dtype``, ``device`` and the call."""

    def __init__(self, weights: dict[str, np.ndarray]):
        super().__init__()
        self.config = SimpleNamespace(in_channels=2 * C)
        self.p = {k: torch.from_numpy(v) for k, v in weights.items()}
        self.calls: list[dict[str, torch.Tensor]] = []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True, **kwargs):
        self.calls.append({"sample": sample.clone(), "text": encoder_hidden_states.clone()})
        t = torch.as_tensor(timestep, dtype=torch.float32).expand(sample.shape[0])
        return (fake_unet(torch, sample, t, encoder_hidden_states, self.p),)


class RecordingScheduler:
    """One fixed timestep, identity input scaling; ``step`` records the guided prediction and leaves x alone."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(self):
        self.model_outputs: list[torch.Tensor] = []

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.timesteps = torch.full((num_inference_steps,), TIMESTEP, dtype=torch.int64)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        return sample

    def step(self, model_output, timestep, sample, return_dict=True):
        self.model_outputs.append(model_output.clone())
        return (sample,)


class VaeConfigStub:
    """The pipeline only reads the VAE's config when ``image`` is already latents and nothing is decoded."""

    config = SimpleNamespace(latent_channels=C, block_out_channels=(1, 1, 1, 1), scaling_factor=1.0)


def _inputs(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"latents": rng.normal(size=(B, C, H, W)).astype(np.float32),
            "image": rng.normal(size=(B, C, H, W)).astype(np.float32),
            "text": rng.normal(size=(B, L, D)).astype(np.float32),
            "null_text": rng.normal(size=(B, L, D)).astype(np.float32)}


def _diffusers_guided(inp: dict[str, np.ndarray], weights: dict[str, np.ndarray], text_scale: float,
                      image_scale: float) -> tuple[np.ndarray, FakeUNet]:
    unet, scheduler = FakeUNet(weights), RecordingScheduler()
    vae = VaeConfigStub()
    pipe = diffusers.StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt_embeds=torch.from_numpy(inp["text"]), negative_prompt_embeds=torch.from_numpy(inp["null_text"]),
               image=torch.from_numpy(inp["image"]), latents=torch.from_numpy(inp["latents"]),
               num_inference_steps=1, guidance_scale=text_scale, image_guidance_scale=image_scale,
               output_type="latent", return_dict=False)
    assert len(unet.calls) == 1 and len(scheduler.model_outputs) == 1
    np.testing.assert_array_equal(out[0].numpy(), inp["latents"])  # the scheduler stub really was the one stepped
    return scheduler.model_outputs[0].numpy(), unet


def _jax_model(weights: dict[str, np.ndarray], record: list | None = None):
    params = {k: jnp.asarray(v) for k, v in weights.items()}

    def model_fn(params: dict[str, jnp.ndarray], x: jnp.ndarray, t: jnp.ndarray, cond: dict) -> jnp.ndarray:
        if record is not None:
            record.append((x, t, cond))
        return fake_unet(jnp, jnp.concatenate([x, cond["image"]], axis=1), t, cond["text"], params)

    return model_fn, params


def _bundles(inp: dict[str, np.ndarray]) -> tuple[dict, dict, dict]:
    image, text, null_text = (jnp.asarray(inp[k]) for k in ("image", "text", "null_text"))
    full = {"image": image, "text": text}
    image_only = {"image": image, "text": null_text}
    neither = {"image": jnp.zeros_like(image), "text": null_text}  # diffusers' null image: zero latents
    return full, image_only, neither


@pytest.mark.parametrize("text_scale, image_scale", [(7.5, 1.5), (3.0, 1.0), (1.5, 2.5)])
def test_two_scale_guidance_matches_diffusers_instruct_pix2pix(text_scale: float, image_scale: float):
    weights, inp = _weights(), _inputs()
    expected, unet = _diffusers_guided(inp, weights, text_scale, image_scale)

    record: list = []
    model_fn, params = _jax_model(weights, record)
    t = jnp.full((B,), float(TIMESTEP))
    ours = two_scale_guidance(model_fn, text_scale, image_scale)(params, jnp.asarray(inp["latents"]), t,
                                                                  _bundles(inp))
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    # Same rows in the same order as the pipeline's single UNet batch: [full; image_only; neither].
    (x, _, cond), = record
    seen = unet.calls[0]
    np.testing.assert_array_equal(np.concatenate([np.asarray(x), np.asarray(cond["image"])], axis=1),
                                  seen["sample"].numpy())
    np.testing.assert_array_equal(np.asarray(cond["text"]), seen["text"].numpy())

    # The oracle is only meaningful if the three branches really differ.
    branches = np.split(np.asarray(model_fn(params, x, jnp.full((3 * B,), float(TIMESTEP)), cond)), 3)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        assert np.abs(branches[i] - branches[j]).max() > 1e-2


def test_unit_scales_give_the_fully_conditional_model():
    weights, inp = _weights(), _inputs()
    model_fn, params = _jax_model(weights)
    x, t = jnp.asarray(inp["latents"]), jnp.full((B,), 0.3)
    full, image_only, neither = _bundles(inp)
    guided = two_scale_guidance(model_fn, 1.0, 1.0)(params, x, t, (full, image_only, neither))
    np.testing.assert_allclose(guided, model_fn(params, x, t, full), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text_scale", [0.0, 1.0, 4.0])
def test_unit_image_scale_is_cfg_against_image_only(text_scale: float):
    weights, inp = _weights(), _inputs()
    model_fn, params = _jax_model(weights)
    x, t = jnp.asarray(inp["latents"]), jnp.full((B,), 0.3)
    full, image_only, neither = _bundles(inp)
    guided = two_scale_guidance(model_fn, text_scale, 1.0)(params, x, t, (full, image_only, neither))
    cfg = classifier_free_guidance(model_fn, text_scale)(params, x, t, (full, image_only))
    np.testing.assert_allclose(guided, cfg, rtol=1e-5, atol=1e-5)


def test_branches_run_as_one_batched_call_in_diffusers_order():
    weights, inp = _weights(), _inputs()
    record: list = []
    model_fn, params = _jax_model(weights, record)
    x, t = jnp.asarray(inp["latents"]), jnp.arange(B, dtype=jnp.float32)
    full, image_only, neither = _bundles(inp)
    two_scale_guidance(model_fn, 5.0, 2.0)(params, x, t, (full, image_only, neither))
    assert len(record) == 1
    (xs, ts, cond), = record
    assert xs.shape == (3 * B, C, H, W)
    np.testing.assert_array_equal(xs, jnp.concatenate([x, x, x]))
    np.testing.assert_array_equal(ts, jnp.concatenate([t, t, t]))
    for key in ("image", "text"):
        np.testing.assert_array_equal(cond[key], jnp.concatenate([full[key], image_only[key], neither[key]]))
