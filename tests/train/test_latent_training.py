"""Latent training: a run with ``latent.vae`` trains the MMDiT on the VAE's normalised posterior means, cached once
per (VAE, data set) and fingerprinted; its samples are decoded before they are drawn; bad settings name the field."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.default import get_config
from mmdit_jax import commands
from mmdit_jax.checks import ConfigError
from mmdit_jax.config_schema import validate_config
from mmdit_jax.data.pipeline import build_sources
from mmdit_jax.data.registry import dataset_spec
from mmdit_jax.interop.safetensors_io import save_state_dict
from mmdit_jax.interop.vae import to_diffusers
from mmdit_jax.models.vae import AutoencoderKL, VAEConfig
from mmdit_jax.components.codec import latent_config
from mmdit_jax.train import loop
from mmdit_jax.train.experiment import build

VAE = VAEConfig(latent_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                scaling_factor=0.8, shift_factor=0.1)


def write_vae_folder(path, seed: int) -> str:
    """A random tiny VAE as a diffusers ``save_pretrained`` folder (config.json + safetensors)."""
    os.makedirs(path, exist_ok=True)
    variables = AutoencoderKL(VAE).init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 3)))
    save_state_dict(to_diffusers(VAE, variables), os.path.join(path, "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"_class_name": "AutoencoderKL", "latent_channels": 4, "block_out_channels": [8, 16],
                   "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": VAE.scaling_factor,
                   "shift_factor": VAE.shift_factor}, f)
    return str(path)


def latent_run_config(vae_path: str):
    cfg = get_config("tiny")
    cfg.latent = latent_config(vae=vae_path, batch_size=32)
    # 32x32 images -> 16x16x4 latents; patch 4 -> a 4x4 token grid
    cfg.model.update(in_channels=4, out_channels=4, sample_size=16)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    vae = write_vae_folder(tmp_path_factory.mktemp("vae"), seed=0)
    workdir = str(tmp_path_factory.mktemp("latent_run"))
    cfg = latent_run_config(vae)
    validate_config(cfg)
    summary = loop.train(cfg, workdir)
    return cfg, workdir, summary, vae


def test_training_examples_are_the_normalised_posterior_means_of_the_images(trained):
    cfg, workdir, summary, vae = trained
    assert summary["last_step"] == cfg.train.num_steps
    cache = os.listdir(os.path.join(workdir, "latent_cache"))
    assert len(cache) == 1 and cache[0].startswith("latents_") and cache[0].endswith(".npy")
    cached = np.load(os.path.join(workdir, "latent_cache", cache[0]))
    assert cached.shape == (cfg.data.num_train, 16, 16, 4)
    # independent encoding: the Flax VAE's posterior mean of the first images, normalised by the config's numbers
    source = build_sources(cfg.data, os.path.join(workdir, "tfds"))["train"]
    images = np.stack([dataset_spec("shapes").to_example(source[i]) for i in range(5)])
    from mmdit_jax.interop.vae import load_vae

    vae_cfg, variables = load_vae(vae)
    mean, _ = AutoencoderKL(vae_cfg).apply(variables, jnp.asarray(images), method="encode")
    expected = (np.asarray(mean) - 0.1) * 0.8
    np.testing.assert_allclose(cached[:5], expected, atol=1e-5)

    exp, start, _ = build(cfg, workdir)          # resumes; the batch holds latents, not pixels
    assert start == cfg.train.num_steps and exp.data_shape == (16, 16, 4)
    batch = next(exp.train_iterator())
    assert batch["x"].shape == (cfg.data.batch_size, 16, 16, 4)
    assert any(np.array_equal(batch["x"][0], row) for row in cached)


def test_cache_is_reused_and_a_different_vae_gets_its_own_entry(trained, tmp_path):
    cfg, workdir, _, _ = trained
    folder = os.path.join(workdir, "latent_cache")
    (name,) = os.listdir(folder)
    mtime = os.path.getmtime(os.path.join(folder, name))
    build(cfg, workdir)
    assert os.listdir(folder) == [name] and os.path.getmtime(os.path.join(folder, name)) == mtime
    other = latent_run_config(write_vae_folder(tmp_path / "other_vae", seed=1))
    build(other, workdir, restore=False)
    assert len(os.listdir(folder)) == 2


def test_samples_and_grids_are_decoded_images(trained):
    cfg, workdir, _, _ = trained
    grid = np.asarray(Image.open(commands.sample(cfg, workdir)))
    # 2 prompts x 2 samples of decoded 32x32 images (latents would be 16x16), upscaled to >= 256 rows
    rows, cols = len(cfg.sample.prompts), cfg.sample.per_prompt
    drawn = dataset_spec("shapes").render(np.zeros((rows * cols, 32, 32, 3), np.uint8), rows).shape
    scale = max(1, 256 // drawn[0])
    assert grid.shape[:2] == (drawn[0] * scale, drawn[1] * scale)
    losses = commands.evaluate(cfg, workdir)
    assert all(np.isfinite(v) for v in losses.values())


def test_bad_latent_settings_name_the_field(trained, tmp_path):
    cfg, _, _, vae = trained
    missing = latent_run_config(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="latent.vae"):
        validate_config(missing)
    wrong_channels = latent_run_config(vae)
    wrong_channels.model.update(in_channels=3, out_channels=3)
    with pytest.raises(ConfigError, match="channels"):
        validate_config(wrong_channels)
    odd = latent_run_config(vae)
    odd.data.image_size = 31
    with pytest.raises(ConfigError, match="divisible by the VAE's downscale factor 2"):
        validate_config(odd)
    typo = latent_run_config(vae)
    typo.latent.vea = "x"
    with pytest.raises(ConfigError, match="latent"):
        validate_config(typo)
