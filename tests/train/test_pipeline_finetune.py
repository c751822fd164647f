"""A LoRA (DreamBooth) fine-tune of a diffusers SD3 pipeline folder (its transformer, VAE latents, CLIP encoders and
scheduler shift, all read from the folder): the frozen base is the folder's transformer, the exported LoRA file
merged into the folder's transformer is the fine-tune's model, and the DreamBooth images are trained as latents."""

import os

import jax
import numpy as np
import pytest

from configs.pipeline_finetune import get_config  # noqa: E402
from mmdit_jax import commands  # noqa: E402
from mmdit_jax.checks import ConfigError  # noqa: E402
from mmdit_jax.config_schema import validate_config  # noqa: E402
from mmdit_jax.interop.sd3 import load_sd3  # noqa: E402
from mmdit_jax.adapters.finetune import load_finetune  # noqa: E402
from mmdit_jax.components.from_config import checkpoint_params, family_from_config  # noqa: E402
from mmdit_jax.pipelines.generator import with_lora  # noqa: E402
from mmdit_jax.pipelines.trained_model import load_trained  # noqa: E402
from mmdit_jax.train import loop  # noqa: E402
from mmdit_jax.train.experiment import build  # noqa: E402


@pytest.fixture(scope="module")
def folder(tiny_sd3_folder):
    return str(tiny_sd3_folder)


def tiny(folder):
    cfg = get_config(folder)
    cfg.data.update(num_train=16, num_test=8, batch_size=4)
    cfg.train.update(num_steps=2, checkpoint_every=2, sample_every=0, log_every=1, ema_decay=0.0)
    cfg.optim.update(learning_rate=1e-2, warmup_steps=0)
    cfg.latent.batch_size = 8
    return cfg


def test_the_config_reads_the_folder(folder):
    cfg = tiny(folder)
    validate_config(cfg)
    assert (cfg.model.num_layers, cfg.model.head_dim, cfg.model.num_heads, cfg.model.in_channels) == (1, 8, 4, 4)
    assert cfg.data.image_size == 64 and cfg.schedule.shift == 3.0 and not cfg.text.t5.enabled
    assert cfg.finetune.init_from == os.path.abspath(folder) and cfg.finetune.lora.rank == 16


def test_a_lora_dreambooth_fine_tune_of_a_pipeline_folder_exports_what_it_trained(folder, tmp_path):
    from mmdit_jax.train.dreambooth import dreambooth_config

    cfg = tiny(folder)
    cfg.dreambooth = dreambooth_config(subject="striped_circle", num_class_images=4)
    cfg.sample.sampler.n_steps = 2
    workdir = str(tmp_path / "run")
    loop.train(cfg, workdir)
    _, reference = load_sd3(folder)
    family = family_from_config(cfg)
    finetune = load_finetune(cfg, workdir, jax.eval_shape(lambda: reference["params"]), record=False,
                             load_checkpoint=checkpoint_params(family))
    assert finetune.lora is not None and finetune.base_workdir == os.path.abspath(folder)
    for a, b in zip(jax.tree_util.tree_leaves(finetune.frozen), jax.tree_util.tree_leaves(reference["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))          # the base is the folder's transformer
    model = load_trained(cfg, workdir)
    path = commands.export_lora(cfg, workdir, str(tmp_path / "export"))
    merged = with_lora(family, reference, path)
    moved = 0.0
    for a, b, c in zip(jax.tree_util.tree_leaves(merged["params"]), jax.tree_util.tree_leaves(model.variables["params"]),
                       jax.tree_util.tree_leaves(reference["params"])):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        moved = max(moved, float(np.abs(np.asarray(b) - np.asarray(c)).max()))
    assert moved > 1e-4                                                        # the two steps changed the model

    # DreamBooth in latent space: the class images were drawn and decoded by the base; training reads latents
    classes = np.load(os.path.join(workdir, "class_images", os.listdir(os.path.join(workdir, "class_images"))[0]))
    assert classes.shape == (4, 64, 64, 3) and classes.dtype == np.uint8
    exp, _, _ = build(cfg, workdir)
    record = exp.sources["train"][0]
    assert record["latent"].shape == (32, 32, 4) and record["caption"] == "a v circle"
    np.testing.assert_allclose(record["latent"], np.asarray(exp.latent.encode(record["image"][None] / 127.5 - 1.0))[0],
                               rtol=0, atol=1e-5)
    exp.checkpointer.close()


def test_a_model_section_that_does_not_fit_the_folder_is_named(folder, tmp_path):
    cfg = tiny(folder)
    cfg.model.num_heads, cfg.model.head_dim = 2, 16          # same width, other heads: only the norms' shapes differ
    cfg.model.qk_norm = "rms_norm"
    with pytest.raises(ConfigError, match="does not fit the run's model section"):
        build(cfg, str(tmp_path / "bad"))
