"""A trained ``AutoencoderKL`` as a diffusers ``vae/`` folder, with its latent normalisation measured.

``export_vae(config, variables, folder, images)`` writes

    folder/config.json                           diffusers AutoencoderKL config (``_class_name: "AutoencoderKL"``)
    folder/diffusion_pytorch_model.safetensors   the weights in diffusers' layout (``interop.vae.to_diffusers``)

which ``diffusers.AutoencoderKL.from_pretrained(folder)`` and ``mmdit_jax.interop.vae.load_vae(folder)`` read.
``shift_factor`` and ``scaling_factor`` follow SD3's convention ``z_model = (z - shift_factor) * scaling_factor``:
over the posterior means ``m`` of the given images (every element of every ``(h, w, L)`` latent, one scalar for
all channels)

    shift_factor = mean(m),    scaling_factor = 1 / std(m)        (population std, float64)

so the diffusion model sees latents of mean 0 and variance 1 over the training images.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.interop.safetensors_io import save_state_dict
from mmdit_jax.interop.vae import to_diffusers
from mmdit_jax.models.vae import AutoencoderKL, VAEConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# Written when diffusers is not installed: the field is informational (diffusers warns on nothing older).
FALLBACK_DIFFUSERS_VERSION = "0.30.0"


def encode_means(vae_cfg: VAEConfig, variables: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Posterior means ``(N, H/f, W/f, L)`` float32 of ``images: (N, H, W, C)`` in [-1, 1], in batches of
    ``batch_size`` (the last batch zero-padded, so one program is compiled)."""
    encode = jax.jit(lambda v, x: AutoencoderKL(vae_cfg).apply(v, x, method="encode")[0])
    n = len(images)
    out = []
    for i in range(0, n, batch_size):
        chunk = np.asarray(images[i:i + batch_size], np.float32)
        pad = batch_size - len(chunk) if n > batch_size else 0
        padded = np.pad(chunk, ((0, pad),) + ((0, 0),) * (chunk.ndim - 1))
        out.append(np.asarray(encode(variables, padded))[:len(chunk)])
    return np.concatenate(out)


def latent_statistics(means: np.ndarray) -> dict[str, float]:
    """``{"shift_factor": mean, "scaling_factor": 1 / std}`` over every element of ``means`` (float64)."""
    m = np.asarray(means, np.float64)
    std = float(m.std())
    if not np.isfinite(std) or std <= 0:
        raise ConfigError(f"the latents have std {std}: cannot set vae.scaling_factor (a collapsed or diverged VAE)")
    return {"shift_factor": float(m.mean()), "scaling_factor": 1.0 / std}


def diffusers_config(vae_cfg: VAEConfig, sample_size: int) -> dict[str, Any]:
    """The ``config.json`` of diffusers' ``AutoencoderKL`` for ``vae_cfg`` (its constructor's arguments)."""
    try:
        version = importlib.metadata.version("diffusers")
    except importlib.metadata.PackageNotFoundError:
        version = FALLBACK_DIFFUSERS_VERSION
    n = len(vae_cfg.block_out_channels)
    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": version,
        "act_fn": "silu", "block_out_channels": list(vae_cfg.block_out_channels),
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "in_channels": vae_cfg.in_channels, "out_channels": vae_cfg.out_channels,
        "latent_channels": vae_cfg.latent_channels, "layers_per_block": vae_cfg.layers_per_block,
        "norm_num_groups": vae_cfg.norm_num_groups, "sample_size": sample_size,
        "scaling_factor": vae_cfg.scaling_factor, "shift_factor": vae_cfg.shift_factor,
        "latents_mean": None, "latents_std": None, "force_upcast": True,
        "use_quant_conv": vae_cfg.use_quant_conv, "use_post_quant_conv": vae_cfg.use_post_quant_conv,
        "mid_block_add_attention": vae_cfg.mid_block_add_attention,
    }


def export_vae(config: Any, variables: Any, folder: str, images: np.ndarray,
               batch_size: int = 64) -> dict[str, float]:
    """Measure the latent normalisation on ``images: (N, H, W, C)`` in [-1, 1] (training images) and write the
    diffusers folder (module docstring). ``config``: a ``VAEConfig`` or a run config (its ``vae`` section).
    Returns ``{"shift_factor", "scaling_factor", "latent_mean", "latent_std", "num_images"}``.

    The folder is replaced whole: written next to it under a unique temporary name; the old folder is renamed
    aside before the new one takes its name and deleted only then, so a crash leaves one complete export.
    """
    vae_cfg = config if isinstance(config, VAEConfig) else VAEConfig.from_dict(config.vae)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != vae_cfg.in_channels or not len(images):
        raise ConfigError(f"export images must be NHWC (N >= 1, H, W, {vae_cfg.in_channels}), got {images.shape}")
    stats = latent_statistics(encode_means(vae_cfg, variables, images, batch_size))
    cfg = dataclasses.replace(vae_cfg, **stats)
    folder = os.path.abspath(folder)
    parent, name = os.path.split(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    save_state_dict(to_diffusers(cfg, variables), os.path.join(tmp, WEIGHTS_NAME))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(diffusers_config(cfg, int(images.shape[1])), f, indent=2)
    old = None
    if os.path.isdir(folder):
        old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
        os.replace(folder, os.path.join(old, name))
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old)
    return {**stats, "latent_mean": stats["shift_factor"], "latent_std": 1.0 / stats["scaling_factor"],
            "num_images": len(images)}
