"""FLUX.1 folders get image-to-image and inpainting through the same ``Pipeline`` as SD3: on a tiny random dev folder
they give diffusers' ``FluxImg2ImgPipeline`` / ``FluxInpaintPipeline`` images to 1e-4 (the posterior and start noise
drawn from diffusers' generator stream), with FLUX's 28 default steps."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from mmdit_jax.pipelines.images import to_unit  # noqa: E402
from mmdit_jax.pipelines.pipeline import Pipeline  # noqa: E402
from tests.pipelines.tiny_flux import LATENT_CHANNELS, components  # noqa: E402
from tests.pipelines.tiny_sd3 import generator_draws, smooth_images  # noqa: E402

T5_LEN, STEPS, SIZE = 16, 3, 16
PROMPTS = ["a red circle in the top left", "a large blue square"]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    parts = components("dev")
    path = tmp_path_factory.mktemp("flux_img2img")
    diffusers.FluxImg2ImgPipeline(**parts).save_pretrained(path)
    refs = {"img2img": diffusers.FluxImg2ImgPipeline(**parts), "inpaint": diffusers.FluxInpaintPipeline(**parts)}
    for ref in refs.values():
        ref.set_progress_bar_config(disable=True)
    return refs, Pipeline.from_folder(path, max_sequence_length=T5_LEN)


def _mask() -> np.ndarray:
    mask = np.zeros((len(PROMPTS), SIZE, SIZE), np.float32)
    mask[0, 4:12, 2:10] = 1.0
    mask[1, :, 8:] = 1.0
    return mask


@pytest.mark.parametrize("task,strength", [("img2img", 0.6), ("inpaint", 0.6), ("inpaint", 1.0)])
def test_flux_image_tasks_equal_diffusers(pipes, task, strength):
    refs, pipe = pipes
    image = smooth_images(len(PROMPTS), SIZE)
    post, noise = generator_draws(7, len(PROMPTS), len(PROMPTS), LATENT_CHANNELS, SIZE // 2)
    extra = {"mask_image": _mask()[..., None]} if task == "inpaint" else {}
    with torch.no_grad():
        ref = refs[task](PROMPTS, image=image, strength=strength, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                         guidance_scale=3.5, generator=torch.Generator().manual_seed(7), max_sequence_length=T5_LEN,
                         output_type="np", **extra).images
    x = pipe.generate(PROMPTS, image=image, strength=strength, num_inference_steps=STEPS, guidance_scale=3.5,
                      noise=noise, posterior_noise=post, **extra)
    err = float(np.max(np.abs(to_unit(x) - ref)))
    print(f"flux {task} strength={strength}: max |diff| = {err:.2e}")
    assert float(np.std(ref)) > 1e-3
    assert err <= 1e-4
