"""Latent training on ``shapes`` at 64x64: the default MMDiT learns the 16x16x4 latents of a KL autoencoder trained
here on the same images (``configs/vae_shapes.py``), instead of 32x32 pixels.

``python -m mmdit_jax --config=configs/latent_shapes.py --config.latent.vae=DIR/vae --workdir=...`` after
``python -m mmdit_jax.train_autoencoder --config=configs/vae_shapes.py --workdir=DIR``; or both stages and the
evaluation in one command: ``python -m experiments.latent_shapes.run`` (experiments/latent_shapes/RESULTS.md).
The transformer is the default's (4 layers, D = 128) on the same 8x8 token grid: patch 2 over 16x16 latents
instead of patch 4 over 32x32 pixels, so the two runs cost the same per step and differ only in what they model.
"""

import ml_collections

from configs.default import get_config as default_config
from mmdit_jax.components.codec import latent_config

VAE_FOLDER = "runs/latent_shapes/vae/vae"        # where experiments/latent_shapes/run.py exports the autoencoder


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = default_config(arg)
    c.data.image_size = 64
    c.latent = latent_config(vae=VAE_FOLDER, batch_size=64)
    c.model.update(patch_size=2, in_channels=4, out_channels=4, sample_size=16)
    return c
