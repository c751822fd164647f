"""Perceptual deviation between two images: the offline stand-in for DreamSim, and a hook for DreamSim itself.

The study measures how far a generation moves from the initial image with DreamSim (a learned perceptual
distance). Offline we use an LPIPS-style distance in the ``shapes`` classifier's conv features, with unit
layer weights:

    d(a, b) = (1 / L) sum_l mean_{h,w} || f^_l(a)[h, w] - f^_l(b)[h, w] ||^2,   f^ = f / ||f||_channels

It is 0 for identical images, symmetric, and grows with perturbations (tested). Its scale is not DreamSim's:
compare numbers only within one metric. ``make_deviation("dreamsim", dreamsim_dir=...)`` uses DreamSim when
the ``dreamsim`` package and its weights are on local disk (nothing is downloaded).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from mmdit_jax.eval.classifier import ShapesClassifier
from mmdit_jax.checks import ConfigError, check_choice

KINDS = ("features", "dreamsim")


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
    model, preprocess = dreamsim(pretrained=True, cache_dir=dreamsim_dir)
    from PIL import Image

    def to_tensor(batch):
        imgs = np.clip((np.asarray(batch, np.float32) + 1) * 127.5, 0, 255).astype(np.uint8) \
            if np.asarray(batch).dtype != np.uint8 else np.asarray(batch)
        return torch.cat([preprocess(Image.fromarray(im)) for im in imgs])

    def deviation(a, b):
        with torch.no_grad():
            return model(to_tensor(a), to_tensor(b)).cpu().numpy()

    return deviation


def make_deviation(kind: str = "features", classifier: ShapesClassifier | None = None,
                   dreamsim_dir: str = "") -> Callable[[Any, Any], np.ndarray]:
    """``deviation(a, b) -> (B,)`` of the chosen kind: 'features' (needs ``classifier``) or 'dreamsim'."""
    check_choice("deviation kind", kind, KINDS)
    if kind == "dreamsim":
        return _dreamsim(dreamsim_dir)
    if classifier is None:
        raise ConfigError("deviation kind 'features' needs the trained shapes classifier")
    return lambda a, b: feature_deviation(classifier, a, b)
