"""The one conversion between the models' image range and pictures, and the checks on images and masks handed in.

    to_unit(x)  = clip(x / 2 + 1/2, 0, 1)          decoder / model output in [-1, 1] -> float32 in [0, 1]
    to_uint8(x) = round(255 to_unit(x))            -> uint8 (diffusers' ``numpy_to_pil``)
    preprocess_images(u) = 2 u - 1                  uint8 (u = x / 255) or float in [0, 1] -> [-1, 1]

``to_uint8`` is bit-identical to ``clip(round(127.5 (x + 1)), 0, 255)`` for every float32 ``x``: checked over all
float32 values in [-1, 1]; outside, both clip.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmdit_jax.checks import ConfigError


def to_unit(images: Any) -> np.ndarray:
    """Output in [-1, 1] -> float32 in [0, 1]: ``VaeImageProcessor.postprocess(output_type="np")``."""
    return np.clip(np.asarray(images, np.float32) / np.float32(2) + np.float32(0.5), 0.0, 1.0)


def to_uint8(images: Any) -> np.ndarray:
    """Output in [-1, 1] -> uint8 ``round(255 clip(x / 2 + 1/2, 0, 1))``, any shape."""
    return (to_unit(images) * np.float32(255)).round().astype(np.uint8)


def preprocess_images(image: Any, name: str = "image") -> np.ndarray:
    """``(N, H, W, 3)`` (or one ``(H, W, 3)``) uint8, or float in [0, 1] -> float32 ``2 u - 1`` in [-1, 1].

    uint8 is read as ``u = x / 255`` (what diffusers' ``pil_to_numpy`` does); nothing is resized.
    """
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ConfigError(f"{name} must be NHWC RGB, (N, H, W, 3) or (H, W, 3), got shape {np.shape(image)}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255)
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not (np.all(np.isfinite(a)) and a.min() >= 0.0 and a.max() <= 1.0):
            raise ConfigError(f"{name} as floats must lie in [0, 1], got [{np.nanmin(a):g}, {np.nanmax(a):g}]")
    else:
        raise ConfigError(f"{name} must be uint8 or float in [0, 1], got dtype {a.dtype}")
    return a * np.float32(2) - np.float32(1)


def preprocess_mask(mask_image: Any, height: int, width: int, factor: int) -> np.ndarray:
    """``(N, H, W)`` / ``(N, H, W, 1)`` / ``(H, W)`` mask (1 = repaint) -> ``(N, H / f, W / f, 1)`` float32 of 0 and 1:
    binarised ``[u >= 1/2]`` at image size, then nearest-neighbour ``m[:, ::f, ::f]`` (diffusers' mask processor with
    ``do_binarize``, then ``interpolate(mode="nearest")``)."""
    a = np.asarray(mask_image)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3 or a.shape[1:] != (height, width):
        raise ConfigError(f"mask_image must be (N, H, W), (N, H, W, 1) or (H, W) at the image size "
                          f"H={height}, W={width}, got shape {np.shape(mask_image)}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255)
    elif np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_:
        a = a.astype(np.float32)
        if not (np.all(np.isfinite(a)) and a.min() >= 0.0 and a.max() <= 1.0):
            raise ConfigError(f"mask_image as floats must lie in [0, 1], got [{np.nanmin(a):g}, {np.nanmax(a):g}]")
    else:
        raise ConfigError(f"mask_image must be uint8, bool or float in [0, 1], got dtype {a.dtype}")
    # exact for sizes divisible by f: torch's nearest picks source index floor(i * f) = i f
    return (a >= 0.5).astype(np.float32)[:, ::factor, ::factor, None]
