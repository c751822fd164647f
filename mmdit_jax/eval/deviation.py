"""Perceptual deviation between two images: the offline stand-in for DreamSim, and a hook for DreamSim itself.

The study measures how far a generation moves from the initial image with DreamSim (a learned perceptual
distance). Offline we use an LPIPS-style distance in the ``shapes`` classifier's conv features, with unit
layer weights:

    d(a, b) = (1 / L) sum_l mean_{h,w} || f^_l(a)[h, w] - f^_l(b)[h, w] ||^2,   f^ = f / ||f||_channels

It is 0 for identical images, symmetric, and grows with perturbations (tested). Its scale is not DreamSim's:
compare numbers only within one metric. ``make_deviation("dreamsim", dreamsim_dir=...)`` uses DreamSim when
the ``dreamsim`` package and its weights are on local disk (nothing is downloaded).

``"pixel"`` needs no trained network (for images the toy classifier has never seen, e.g. a pipeline folder's):
the RMS difference of the images in [0, 1] after box-averaging to at most ``PIXEL_MAX_SIDE`` pixels a side,

    d(a, b) = sqrt(mean_{h,w,c} (pool(a) - pool(b))^2)                          in [0, 1]

The pooling keeps it about layout and colour rather than pixel-level texture and makes sizes comparable.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from mmdit_jax.eval.classifier import ShapesClassifier
from mmdit_jax.checks import ConfigError, check_choice

KINDS = ("features", "dreamsim", "pixel")
PIXEL_MAX_SIDE = 64
# DreamSim's ensemble checkpoint files in its cache_dir: the layout of dreamsim >= 0.2, then of 0.1.x. The package
# downloads them when its own list is incomplete, so we look first.
DREAMSIM_LAYOUTS = (
    ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar", "ensemble_lora"),
    ("dino_vitb16_pretrain.pth", "dino_vitb16_lora", "open_clip_vitb16_pretrain.pth.tar", "open_clip_vitb16_lora",
     "clip_vitb16_pretrain.pth.tar", "clip_vitb16_lora"),
)


def feature_deviation(classifier: ShapesClassifier, a: Any, b: Any) -> np.ndarray:
    """``(B,)`` deviation of image batches ``a`` and ``b`` (``(B, H, W, 3)``, uint8 or [-1, 1])."""
    if np.shape(a) != np.shape(b):
        raise ConfigError(f"deviation needs two batches of the same shape, got {np.shape(a)} and {np.shape(b)}")
    fa, fb = classifier.feature_maps(a), classifier.feature_maps(b)
    per_layer = []
    for x, y in zip(fa, fb):
        x = x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10)
        y = y / (np.linalg.norm(y, axis=-1, keepdims=True) + 1e-10)
        per_layer.append(np.mean(np.sum((x - y) ** 2, -1), axis=(1, 2)))
    return np.mean(per_layer, axis=0)


def _unit(images: Any) -> np.ndarray:
    """uint8 or [-1, 1] images -> float64 in [0, 1]."""
    x = np.asarray(images)
    return x / 255.0 if x.dtype == np.uint8 else np.clip((x.astype(np.float64) + 1) / 2, 0, 1)


def _box_pool(x: np.ndarray, max_side: int) -> np.ndarray:
    """``(B, H, W, C)`` -> ``(B, H // k, W // k, C)`` block means; ``k``: the smallest factor with sides <= max_side."""
    k = max(1, -(-max(x.shape[1], x.shape[2]) // max_side))
    h, w = x.shape[1] // k * k, x.shape[2] // k * k
    return x[:, :h, :w].reshape(x.shape[0], h // k, k, w // k, k, x.shape[3]).mean(axis=(2, 4))


def pixel_deviation(a: Any, b: Any, max_side: int = PIXEL_MAX_SIDE) -> np.ndarray:
    """``(B,)`` RMS difference in [0, 1] of image batches ``a`` and ``b`` (``(B, H, W, 3)``, uint8 or [-1, 1])
    after box-averaging to at most ``max_side`` pixels a side."""
    if np.shape(a) != np.shape(b):
        raise ConfigError(f"deviation needs two batches of the same shape, got {np.shape(a)} and {np.shape(b)}")
    pa, pb = _box_pool(_unit(a), max_side), _box_pool(_unit(b), max_side)
    return np.sqrt(np.mean((pa - pb) ** 2, axis=(1, 2, 3)))


def dreamsim_weights_missing(dreamsim_dir: str) -> list[str]:
    """The DreamSim checkpoint files ``dreamsim_dir`` lacks (of the closest known layout); ``[]`` when complete."""
    missing = [[f for f in layout if not os.path.exists(os.path.join(dreamsim_dir, f))] for layout in DREAMSIM_LAYOUTS]
    return min(missing, key=len)


def _dreamsim(dreamsim_dir: str) -> Callable[[Any, Any], np.ndarray]:
    if not dreamsim_dir or not os.path.isdir(dreamsim_dir):
        raise ConfigError(f"deviation kind 'dreamsim' needs dreamsim_dir, a local folder with DreamSim's weights; "
                          f"got {dreamsim_dir!r}. Use kind='features' offline.")
    try:
        import torch
        from dreamsim import dreamsim
    except ImportError as e:
        raise ConfigError("deviation kind 'dreamsim' needs the optional `dreamsim` package (pip install dreamsim); "
                          "use kind='features' otherwise") from e
    missing = dreamsim_weights_missing(dreamsim_dir)
    if missing:
        raise ConfigError(f"dreamsim_dir={dreamsim_dir!r} lacks DreamSim's weights {missing} (nothing is downloaded)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the package fetches checkpoints it does not find under its own file list: refuse instead of downloading
    fetch = torch.hub.download_url_to_file

    def refuse(url, *args, **kwargs):
        raise ConfigError(f"DreamSim tried to download {url}; put its weights in dreamsim_dir={dreamsim_dir!r}")

    torch.hub.download_url_to_file = refuse
    try:
        model, preprocess = dreamsim(pretrained=True, device=device, cache_dir=dreamsim_dir)
    finally:
        torch.hub.download_url_to_file = fetch
    from PIL import Image

    def to_tensor(batch):
        imgs = np.round(_unit(batch) * 255).astype(np.uint8)
        return torch.cat([preprocess(Image.fromarray(im)) for im in imgs]).to(device)

    def deviation(a, b):
        with torch.no_grad():
            return model(to_tensor(a), to_tensor(b)).cpu().numpy()

    return deviation


def make_deviation(kind: str = "features", classifier: ShapesClassifier | None = None,
                   dreamsim_dir: str = "") -> Callable[[Any, Any], np.ndarray]:
    """``deviation(a, b) -> (B,)`` of the chosen kind: 'features' (needs ``classifier``), 'dreamsim' or 'pixel'."""
    check_choice("deviation kind", kind, KINDS)
    if kind == "dreamsim":
        return _dreamsim(dreamsim_dir)
    if kind == "pixel":
        return pixel_deviation
    if classifier is None:
        raise ConfigError("deviation kind 'features' needs the trained shapes classifier")
    return lambda a, b: feature_deviation(classifier, a, b)
