"""The one ``Pipeline`` on a training workdir: text-to-image is what ``SamplingPipeline`` draws for the prompt and
seed; image-to-image is SDEdit on the run's probability-flow ODE (``diffusion.sdedit.sdedit_ode`` with the run's
CFG, which ``EditingPipeline.sdedit`` runs through this pipeline); inpainting with an all-ones mask is image-to-image
exactly, and with an all-zeros mask gives the image back (the known region is put back at every step, and the grid
ends at the data)."""

import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.pipelines.editing import EditingPipeline
from mmdit_jax.pipelines.pipeline import Pipeline
from mmdit_jax.pipelines.sampling import SamplingPipeline
from mmdit_jax.pipelines.trained_model import load_trained
from tests.pipeline_oracles import sdedit_written_out

PROMPTS = ["a red circle", "a large blue square in the top left"]


@pytest.fixture(scope="module")
def run(tiny_base_run):
    config, workdir = tiny_base_run
    return config, workdir, Pipeline.from_workdir(config, workdir)


def _images(n: int) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32] / 31.0
    base = np.stack([x, y, 1 - x * y], axis=-1)
    return np.stack([(base * 255 * (0.5 + 0.5 * k / max(n - 1, 1))).round().astype(np.uint8) for k in range(n)])


def test_text_to_image_is_the_sampling_pipeline(run):
    config, workdir, pipe = run
    sampling = SamplingPipeline.from_workdir(config, workdir)
    for prompt, seed in zip(PROMPTS, (3, 4)):
        np.testing.assert_array_equal(pipe([prompt], seed=seed), sampling([prompt], seed))
    with pytest.raises(ConfigError, match="training size 32x32"):
        pipe(PROMPTS[:1], height=64, width=32)
    with pytest.raises(ConfigError, match="pipeline-folder options"):
        pipe(PROMPTS[:1], latents=np.zeros((1, 32, 32, 3), np.float32))


def test_image_to_image_is_sdedit_on_the_run(run):
    config, workdir, pipe = run
    images = _images(2)
    got = pipe(PROMPTS, image=images, strength=0.6, seed=5)
    np.testing.assert_array_equal(got, sdedit_written_out(config, workdir, images, PROMPTS, 0.6, seed=5))
    # the editor's SDEdit is this task, one caption for all images included
    editor = EditingPipeline(load_trained(config, workdir))
    np.testing.assert_array_equal(editor.sdedit(images, PROMPTS, 0.6, seed=5), got)
    np.testing.assert_array_equal(editor.sdedit(images, PROMPTS[:1], 0.6, seed=5),
                                  pipe(PROMPTS[:1] * 2, image=images, strength=0.6, seed=5))
    assert np.abs(got.astype(int) - images.astype(int)).mean() > 1.0     # the edit moved the image


def test_inpainting_keeps_the_unmasked_region(run):
    _, _, pipe = run
    images = _images(2)
    everything = pipe.generate(PROMPTS, image=images, mask_image=np.ones((32, 32), np.float32), strength=0.8, seed=2)
    sdedit = pipe.generate(PROMPTS, image=images, strength=0.8, seed=2)
    np.testing.assert_array_equal(np.asarray(everything), np.asarray(sdedit))
    nothing = pipe(PROMPTS, image=images, mask_image=np.zeros((32, 32), np.float32), strength=0.8, seed=2)
    assert np.abs(nothing.astype(int) - images.astype(int)).max() <= 1
    half = np.zeros((32, 32), np.float32)
    half[:, 16:] = 1.0
    out = pipe(PROMPTS, image=images, mask_image=half, strength=0.8, seed=2)
    assert np.abs(out[:, :, :16].astype(int) - images[:, :, :16].astype(int)).max() <= 1
    assert np.abs(out[:, :, 16:].astype(int) - images[:, :, 16:].astype(int)).mean() > 1.0
