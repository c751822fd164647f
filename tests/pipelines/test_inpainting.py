"""Pipeline.generate(image=..., mask_image=...) on a tiny random 16-channel StableDiffusion3InpaintPipeline saved
with save_pretrained gives diffusers' images to 1e-4 at strengths 0.3, 0.6 and 1 with CFG (decode_shift=False: diffusers' decode without the VAE shift);
the default decode equals diffusers' latents decoded with the shift; the mask is binarised and downsampled as
diffusers' mask processor does; mask shape / count errors are named."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.diffusion.flow_match import flow_match_euler  # noqa: E402
from mmdit_jax.diffusion.sdedit import inpaint_flow_match_euler  # noqa: E402
from mmdit_jax.pipelines.images import preprocess_mask, to_unit  # noqa: E402
from mmdit_jax.pipelines.pipeline import Pipeline  # noqa: E402
from tests.pipelines.tiny_sd3 import components, generator_draws, smooth_images  # noqa: E402

T5_LEN, STEPS, CHANNELS, SIZE = 16, 4, 16, 32
PROMPTS = ["a red circle in the top left", "a large blue square"]


def _mask(n: int) -> np.ndarray:
    """(n, SIZE, SIZE, 1) float masks with soft values around 0.5, so binarising matters."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    centre = rng.uniform(0.3, 0.7, (n, 1, 1, 2))
    r = np.hypot(xx[None, ..., None] - centre[..., :1], yy[None, ..., None] - centre[..., 1:])
    return np.clip(1.2 - 2.5 * r, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    ref = diffusers.StableDiffusion3InpaintPipeline(**components(with_t5=False, shift=3.0, channels=CHANNELS))
    ref.set_progress_bar_config(disable=True)
    path = tmp_path_factory.mktemp("inpaint")
    ref.save_pretrained(path)
    return ref, Pipeline.from_folder(path, max_sequence_length=T5_LEN)


def _run_both(pipes, strength, decode_shift, output_type="np"):
    ref_pipe, pipe = pipes
    image, mask = smooth_images(len(PROMPTS), SIZE), _mask(len(PROMPTS))
    post, noise = generator_draws(11, len(PROMPTS), len(PROMPTS), CHANNELS, SIZE // 2)
    with torch.no_grad():
        ref = ref_pipe(PROMPTS, image=image, mask_image=mask, strength=strength, height=SIZE, width=SIZE,
                       num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator().manual_seed(11),
                       max_sequence_length=T5_LEN, output_type=output_type).images
    x = pipe.generate(PROMPTS, image=image, mask_image=mask, strength=strength, num_inference_steps=STEPS,
                      guidance_scale=5.0, noise=noise, posterior_noise=post, decode_shift=decode_shift)
    return ref_pipe, x, ref


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_inpaint_equals_diffusers(pipes, strength):
    _, x, ref = _run_both(pipes, strength, decode_shift=False)
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"inpaint strength={strength}: max |diff| = {err:.2e}")
    assert float(np.std(ref)) > 1e-3
    assert err <= 1e-4


def test_default_decode_adds_the_vae_shift(pipes):
    ref_pipe, x, latents = _run_both(pipes, 0.6, decode_shift=True, output_type="latent")
    vae = ref_pipe.vae.config
    with torch.no_grad():
        decoded = ref_pipe.vae.decode(latents / vae.scaling_factor + vae.shift_factor, return_dict=False)[0]
        unshifted = ref_pipe.vae.decode(latents / vae.scaling_factor, return_dict=False)[0]
    ref = ref_pipe.image_processor.postprocess(decoded, output_type="np")
    # diffusers' own decode (no shift) is visibly different: the flag matters
    assert float(np.max(np.abs(ref - ref_pipe.image_processor.postprocess(unshifted, output_type="np")))) > 1e-3
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"inpaint decode_shift=True vs diffusers latents decoded with the shift: max |diff| = {err:.2e}")
    assert err <= 1e-4


def test_mask_is_diffusers_mask_processor(pipes):
    ref_pipe, _ = pipes
    mask = _mask(2)
    ref = ref_pipe.mask_processor.preprocess(mask, height=SIZE, width=SIZE)
    ref = torch.nn.functional.interpolate(ref, size=(SIZE // 2, SIZE // 2)).numpy().transpose(0, 2, 3, 1)
    ours = preprocess_mask(mask, SIZE, SIZE, 2)
    assert 0 < ours.mean() < 1
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(preprocess_mask(mask[..., 0], SIZE, SIZE, 2), ours)
    np.testing.assert_array_equal(preprocess_mask((mask * 255).round().astype(np.uint8), SIZE, SIZE, 2),
                                  preprocess_mask((mask * 255).round() / 255, SIZE, SIZE, 2))


def test_empty_mask_keeps_x0_and_full_mask_is_plain_euler():
    """Family-agnostic loop on a toy velocity: m = 0 ends exactly on x0, m = 1 is flow_match_euler."""
    rng = np.random.default_rng(0)
    x0, noise = (rng.standard_normal((2, 4, 4, 3)).astype(np.float32) for _ in range(2))
    sigmas = np.asarray([1.0, 0.7, 0.3, 0.0], np.float32)
    net = lambda x, t: noise - x0 + 0.1 * x * t[:, None, None, None]  # noqa: E731
    zeros, ones = np.zeros((2, 4, 4, 1), np.float32), np.ones((2, 4, 4, 1), np.float32)
    np.testing.assert_array_equal(inpaint_flow_match_euler(net, noise, sigmas, x0, noise, zeros), x0)
    np.testing.assert_array_equal(inpaint_flow_match_euler(net, noise, sigmas, x0, noise, ones),
                                  flow_match_euler(net, noise, sigmas))


def test_bad_masks_are_named(pipes):
    _, pipe = pipes
    image = smooth_images(2, SIZE)
    with pytest.raises(ConfigError, match="mask_image must be"):
        pipe(PROMPTS, image=image, mask_image=np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ConfigError, match="mask_image must be"):
        pipe(PROMPTS, image=image, mask_image=np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ConfigError, match="mask_image holds 3 masks for 2 prompts"):
        pipe(PROMPTS, image=image, mask_image=np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ConfigError, match=r"mask_image as floats must lie in \[0, 1\]"):
        pipe(PROMPTS, image=image, mask_image=np.full((2, 32, 32), 2.0, np.float32))
    with pytest.raises(ConfigError, match="strength"):
        pipe(PROMPTS, image=image, mask_image=_mask(2), strength=1.2)
    with pytest.raises(ConfigError, match="width=33"):
        pipe(PROMPTS, image=np.zeros((2, 32, 33, 3), np.float32), mask_image=np.zeros((2, 32, 33), np.float32))
