"""Pipeline.generate(image=...) on a tiny random StableDiffusion3Img2ImgPipeline saved with save_pretrained gives
diffusers' images to 1e-4 at strengths 0.3, 0.6 and 1 with CFG (the posterior and start noise drawn from diffusers' generator stream);
the start index is diffusers' get_timesteps; bad strength, image size and image count are named."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.diffusion.sdedit import img2img_start, scale_noise  # noqa: E402
from mmdit_jax.pipelines.images import preprocess_images, to_unit  # noqa: E402
from mmdit_jax.pipelines.pipeline import Pipeline  # noqa: E402
from tests.pipelines.tiny_sd3 import components, generator_draws, smooth_images  # noqa: E402

T5_LEN, STEPS, SIZE = 16, 4, 32
PROMPTS = ["a red circle in the top left", "a large blue square"]


def test_start_index_is_diffusers():
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    get_timesteps = diffusers.StableDiffusion3Img2ImgPipeline.get_timesteps
    holder = type("P", (), {"scheduler": scheduler})()
    for n in (1, 3, 4, 10, 28, 50):
        for strength in (0.05, 0.1, 0.3, 1 / 3, 0.6, 0.7, 0.99, 1.0):
            if int(max(n - min(n * strength, n), 0)) >= n:     # no step left: diffusers fails later
                with pytest.raises(ConfigError, match="strength"):
                    img2img_start(n, strength)
                continue
            scheduler.set_timesteps(n)
            timesteps, steps = get_timesteps(holder, n, strength, "cpu")
            t_start = img2img_start(n, strength)
            assert steps == n - t_start
            np.testing.assert_array_equal(timesteps.numpy(), scheduler.timesteps[t_start:].numpy())


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5, True, "0.5"])
def test_bad_strength_is_named(strength):
    with pytest.raises(ConfigError, match="strength"):
        img2img_start(10, strength)


def test_scale_noise_is_the_forward_process():
    x0, noise = np.full((1, 2, 2, 1), 3.0, np.float32), np.full((1, 2, 2, 1), -1.0, np.float32)
    np.testing.assert_allclose(scale_noise(x0, noise, 0.25), 0.25 * -1.0 + 0.75 * 3.0)
    np.testing.assert_array_equal(scale_noise(x0, noise, 1.0), noise)
    np.testing.assert_array_equal(scale_noise(x0, noise, 0.0), x0)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    ref = diffusers.StableDiffusion3Img2ImgPipeline(**components(with_t5=False, shift=3.0))
    ref.set_progress_bar_config(disable=True)
    path = tmp_path_factory.mktemp("img2img")
    ref.save_pretrained(path)
    return ref, Pipeline.from_folder(path, max_sequence_length=T5_LEN)


def _image(n: int) -> np.ndarray:
    return smooth_images(n, SIZE)


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_img2img_equals_diffusers(pipes, strength):
    ref_pipe, pipe = pipes
    image = _image(len(PROMPTS))
    post, noise = generator_draws(7, len(PROMPTS), len(PROMPTS), 4, SIZE // 2)
    with torch.no_grad():
        ref = ref_pipe(PROMPTS, image=image, strength=strength, height=SIZE, width=SIZE,
                       num_inference_steps=STEPS, guidance_scale=5.0, generator=torch.Generator().manual_seed(7),
                       max_sequence_length=T5_LEN, output_type="np").images
    x = pipe.generate(PROMPTS, image=image, strength=strength, num_inference_steps=STEPS, guidance_scale=5.0,
                      noise=noise, posterior_noise=post)
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"img2img strength={strength}: max |diff| = {err:.2e}")
    assert float(np.std(ref)) > 1e-3
    assert err <= 1e-4


def test_one_image_for_all_prompts_uint8_and_seeded_run(pipes):
    _, pipe = pipes
    image = _image(1)
    u8 = (image * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(preprocess_images(u8), u8.astype(np.float32) / np.float32(255) * 2 - 1)
    a = pipe(PROMPTS, image=u8, strength=0.6, num_inference_steps=STEPS, guidance_scale=5.0, seed=3)
    b = pipe(PROMPTS, image=u8, strength=0.6, num_inference_steps=STEPS, guidance_scale=5.0, seed=3)
    assert a.shape == (2, SIZE, SIZE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_bad_inputs_are_named(pipes):
    _, pipe = pipes
    with pytest.raises(ConfigError, match="strength"):
        pipe(PROMPTS, image=_image(2), strength=0.0)
    with pytest.raises(ConfigError, match="width=33"):
        pipe(PROMPTS, image=np.zeros((2, 32, 33, 3), np.float32))
    with pytest.raises(ConfigError, match="height=31"):
        pipe(PROMPTS, image=np.zeros((2, 31, 32, 3), np.float32))
    with pytest.raises(ConfigError, match="image holds 3 images for 2 prompts"):
        pipe(PROMPTS, image=_image(3))
    with pytest.raises(ConfigError, match=r"image as floats must lie in \[0, 1\]"):
        pipe(PROMPTS, image=_image(2) * 2 - 1)
    with pytest.raises(ConfigError, match="image must be NHWC RGB"):
        pipe(PROMPTS, image=np.zeros((2, 32, 32, 4), np.float32))
    with pytest.raises(ConfigError, match="noise must have shape"):
        pipe(PROMPTS, image=_image(2), noise=np.zeros((2, 8, 8, 4), np.float32))
