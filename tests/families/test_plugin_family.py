"""A family registered from outside the package, with its own text stack (T5 only, no pooled vector) and folder spec
(``tests/plugins/t5dit.py``: registry lines only), runs text-to-image, image-to-image and inpainting through the
shared ``Pipeline`` from a tiny saved folder and from a trained tiny workdir.

Oracles: on the folder, image-to-image at strength 1 starts from the noise itself, so it is text-to-image from those
latents exactly; an all-ones inpainting mask is image-to-image (to float rounding); an all-zeros mask keeps every latent, so the
prompt cannot change the image. On the workdir, text-to-image is what ``SamplingPipeline`` draws and image-to-image is
``EditingPipeline.sdedit``."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import tests.plugins.t5dit  # noqa: E402,F401  (registers the plug-in, as a config file or an entry point would)
from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.pipelines.pipeline import Pipeline  # noqa: E402
from mmdit_jax.pipelines.sampling import SamplingPipeline  # noqa: E402
from tests.pipeline_oracles import sdedit_written_out  # noqa: E402
from tests.pipelines.tiny_sd3 import components, smooth_images  # noqa: E402

PROMPTS = ["a red circle", "a large blue square"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    parts = components(with_t5=True, shift=3.0)
    path = tmp_path_factory.mktemp("t5dit")
    saved = {"transformer": parts["transformer"], "vae": parts["vae"], "scheduler": parts["scheduler"],
             "text_encoder": parts["text_encoder_3"], "tokenizer": parts["tokenizer_3"]}
    index = {"_class_name": "T5DiTPipeline", "_diffusers_version": diffusers.__version__}
    for name, part in saved.items():
        part.save_pretrained(path / name)
        index[name] = [type(part).__module__.split(".")[0], type(part).__name__]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


@pytest.fixture(scope="module")
def pipe(folder):
    return Pipeline.from_folder(folder, max_sequence_length=8)


def test_the_folder_reads_its_own_text_stack(pipe):
    assert pipe.family.name == "t5dit" and not pipe.family.config.use_pooled
    cond = pipe.text.encode(PROMPTS)
    assert list(cond) == ["context"] and cond["context"].shape == (2, 8, 32)
    with pytest.raises(ConfigError, match="pooled"):
        pipe(PROMPTS[:1], height=16, width=16, num_inference_steps=1, steering=(["a"], ["b"], 1.0))


def test_folder_text_to_image_image_to_image_and_inpainting(pipe):
    size, steps = 16, 3
    images = smooth_images(2, size)
    z = np.random.default_rng(0).standard_normal((2, size // 2, size // 2, 4)).astype(np.float32)
    t2i = np.asarray(pipe.generate(PROMPTS, height=size, width=size, num_inference_steps=steps, latents=z))
    assert t2i.shape == (2, size, size, 3) and float(np.std(t2i)) > 1e-3
    full = np.asarray(pipe.generate(PROMPTS, image=images, strength=1.0, num_inference_steps=steps, noise=z))
    np.testing.assert_array_equal(full, t2i)
    img2img = np.asarray(pipe.generate(PROMPTS, image=images, strength=0.6, num_inference_steps=steps, seed=1))
    ones = np.asarray(pipe.generate(PROMPTS, image=images, mask_image=np.ones((size, size), np.float32),
                                    strength=0.6, num_inference_steps=steps, seed=1))
    # the inpainting loop is its own compiled scan: equal up to float rounding
    np.testing.assert_allclose(ones, img2img, atol=1e-5, rtol=0)
    zeros = [np.asarray(pipe.generate([p] * 2, image=images, mask_image=np.zeros((size, size), np.float32),
                                      strength=0.6, num_inference_steps=steps, seed=1)) for p in PROMPTS]
    np.testing.assert_array_equal(zeros[0], zeros[1])
    assert float(np.max(np.abs(zeros[0] - ones))) > 1e-3          # the masked run did use the model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from configs.default import get_config as default_config
    from configs.text import get_config as text_config
    from mmdit_jax.families import family_config
    from mmdit_jax.train import loop

    cfg = default_config("tiny")
    fields = {k: v for k, v in cfg.model.items() if k not in ("name", "use_pooled", "joint_attention_dim")}
    cfg.model = family_config("t5dit", **fields, joint_attention_dim=32)
    cfg.text = text_config("tiny")
    cfg.text.t5.preset, cfg.text.t5.max_length = "t5_tiny", 8
    cfg.train.update(num_steps=2, checkpoint_every=2, sample_every=0)
    workdir = str(tmp_path_factory.mktemp("t5dit_run"))
    loop.train(cfg, workdir)
    return cfg, workdir


def test_workdir_text_to_image_image_to_image_and_inpainting(run):
    cfg, workdir = run
    pipe = Pipeline.from_workdir(cfg, workdir)
    assert list(pipe.text.encode(PROMPTS[:1])) == ["context"]
    sampling = SamplingPipeline.from_workdir(cfg, workdir)
    np.testing.assert_array_equal(pipe(PROMPTS[:1], seed=2), sampling(PROMPTS[:1], 2))
    images = (smooth_images(2, 32) * 255).round().astype(np.uint8)
    img2img = pipe(PROMPTS, image=images, strength=0.6, seed=5)
    np.testing.assert_array_equal(img2img, sdedit_written_out(cfg, workdir, images, PROMPTS, 0.6, 5))
    ones = pipe(PROMPTS, image=images, mask_image=np.ones((32, 32), np.float32), strength=0.6, seed=5)
    np.testing.assert_array_equal(ones, img2img)
    kept = pipe(PROMPTS, image=images, mask_image=np.zeros((32, 32), np.float32), strength=0.6, seed=5)
    assert np.abs(kept.astype(int) - images.astype(int)).max() <= 1
