"""The cached stages of the latent experiments (experiments/latent_shapes, experiments/pooled_families): the
autoencoder, the latent models and the 64x64 attribute classifier. Each trains once into the workdir and is reused.
"""

from __future__ import annotations

import os

from configs.flux_shapes import get_config as flux_config
from configs.latent_shapes import get_config as latent_mmdit_config
from configs.vae_shapes import get_config as vae_config
from mmdit_jax.eval.classifier import ShapesClassifier, train_classifier

# Bigger SD3-style models (6 layers of D = 192, 6 heads of 32): how much model and training short prompts need.
# ``sd3_study`` also trains longer, on captions that at times leave the colour or the shape unnamed (the prompts
# whose free attribute pooled steering can set); the cosine schedule spans a whole run, so each is its own run.
LARGER = {"sd3_large": dict(num_steps=5000, captions="full"), "sd3_study": dict(num_steps=12000, captions="partial")}
MODELS = ("sd3", "flux", "sd3_no_pooled", *LARGER)
DESCRIPTIONS = {
    "sd3": "SD3-style: the default MMDiT's transformer (4 joint blocks, D = 128, patch 2), 4,000 steps",
    "flux": "FLUX-style: 2 double- + 2 single-stream blocks of D = 128, RoPE, the same token grid, 4,000 steps",
    "sd3_no_pooled": "SD3-style with use_pooled=False (y = e_t), otherwise as sd3",
    "sd3_large": "SD3-style with 6 joint blocks of D = 192 (6 heads of 32), 5,000 steps",
    "sd3_study": "SD3-style with 6 joint blocks of D = 192, 12,000 steps, on captions of which 2 in 11 leave the "
                 "colour or the shape unnamed",
}


def train_vae(workdir: str) -> str:
    folder = os.path.join(workdir, "vae")
    export = os.path.join(folder, "vae")
    if not os.path.isfile(os.path.join(export, "config.json")):
        from mmdit_jax.train.autoencoder import train_autoencoder

        train_autoencoder(vae_config(), folder)
    return export


def train_model(workdir: str, vae: str, model: str):
    from mmdit_jax.train.loop import train

    if model not in MODELS:
        raise ValueError(f"latent model {model!r}: valid {MODELS}")
    cfg = flux_config() if model == "flux" else latent_mmdit_config()
    if model == "sd3_no_pooled":
        cfg.model.use_pooled = False        # y = e_t: the pooled study's control (experiments/pooled_families)
    if model in LARGER:
        cfg.model.update(num_layers=6, num_heads=6)
        cfg.train.num_steps = LARGER[model]["num_steps"]
        cfg.data.captions = LARGER[model]["captions"]
    cfg.latent.vae = vae
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
