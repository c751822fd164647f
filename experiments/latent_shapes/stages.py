"""The cached stages of the latent experiments (experiments/latent_shapes, experiments/pooled_families): the
autoencoder, the latent models and the 64x64 attribute classifier. Each trains once into the workdir and is reused.
"""

from __future__ import annotations

import os

from configs.flux_shapes import get_config as flux_config
from configs.latent_shapes import get_config as latent_mmdit_config
from configs.vae_shapes import get_config as vae_config
from mmdit_jax.eval.classifier import ShapesClassifier, train_classifier

MODELS = ("sd3", "flux", "sd3_no_pooled", "sd3_large")


def train_vae(workdir: str) -> str:
    folder = os.path.join(workdir, "vae")
    export = os.path.join(folder, "vae")
    if not os.path.isfile(os.path.join(export, "config.json")):
        from mmdit_jax.train.autoencoder import train_autoencoder

        train_autoencoder(vae_config(), folder)
    return export


def train_model(workdir: str, vae: str, model: str):
    from mmdit_jax.config_schema import validate_config
    from mmdit_jax.train.loop import train

    if model not in MODELS:
        raise ValueError(f"latent model {model!r}: valid {MODELS}")
    cfg = flux_config() if model == "flux" else latent_mmdit_config()
    if model == "sd3_no_pooled":
        cfg.model.use_pooled = False        # y = e_t: the pooled study's control (experiments/pooled_families)
    if model == "sd3_large":                # how much model short prompts need (D = 192, 6 layers, 5,000 steps)
        cfg.model.update(num_layers=6, num_heads=6)
        cfg.train.num_steps = 5000
    cfg.latent.vae = vae
    validate_config(cfg)
    folder = os.path.join(workdir, model)
    train(cfg, folder)          # resumes; returns at once when the run is complete
    return cfg, folder


def classifier_64(workdir: str) -> ShapesClassifier:
    path = os.path.join(workdir, "classifier64.msgpack")
    if os.path.exists(path):
        return ShapesClassifier.load(path)
    classifier = train_classifier(image_size=64)
    classifier.save(path)
    return classifier
