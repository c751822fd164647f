"""The tasks a pipeline runs, and the host-side rules of each (as diffusers' pipelines apply them):

==============  =========================================================================================
task            what the compiled program does with the latents ``z`` (grid ``sigma_0 > ... > sigma_n``)
==============  =========================================================================================
text_to_image   ``z_0 ~ N(0, I)`` (or given), Euler on the whole grid, decode
image_to_image  SDEdit: ``x0`` = VAE posterior sample of the image, ``t_s = img2img_start(n, strength)``,
                ``z = sigma_{t_s} noise + (1 - sigma_{t_s}) x0``, Euler on ``sigmas[t_s:]``, decode
inpainting      as image_to_image, and after every step ``z <- (1 - m) scale_noise(x0, noise, sigma_{i+1}) + m z``
                (``m`` the latent mask, 1 = repaint); from ``noise`` itself at strength 1
reference       in-context editing (FLUX.1 Kontext): the posterior *mode* of the reference image joins the image
                tokens of both guidance branches with its own positions, never noised; text-to-image otherwise
==============  =========================================================================================

Every task runs with every guidance of ``mmdit_jax.pipelines.guidance`` its family supports.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int

Array = jax.Array
TASKS = ("text_to_image", "image_to_image", "inpainting", "reference")
# diffusers' defaults (image tasks of a folder: its ``FolderSpec.image_task_steps``)
DEFAULT_STEPS = {"text_to_image": 28, "reference": 28, "image_to_image": 50, "inpainting": 50}

# (width, height) pairs Kontext was trained at (diffusers' pipeline_flux_kontext, BFL's util.py)
PREFERRED_KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)
DEFAULT_MAX_AREA = 1024 ** 2


def task_of(image: Any, mask_image: Any, reference_image: Any) -> str:
    """The task the given images ask for; combinations that mean nothing raise."""
    if reference_image is not None:
        if image is not None or mask_image is not None:
            raise ConfigError("reference_image (in-context editing) cannot be combined with image / mask_image "
                              "(image-to-image, inpainting)")
        return "reference"
    if mask_image is not None:
        if image is None:
            raise ConfigError("mask_image needs the image it masks (image=...)")
        return "inpainting"
    return "text_to_image" if image is None else "image_to_image"


def slg_window(num_inference_steps: int, start: float, stop: float) -> np.ndarray:
    """``(n,)`` bool: the steps diffusers' ``StableDiffusion3Pipeline`` runs skip-layer guidance at,
    ``i > n start and i < n stop`` with its Python float products."""
    n = num_inference_steps
    return np.asarray([n * start < i < n * stop for i in range(n)], bool)


def noise_or(name: str, value: Any, shape: tuple[int, ...], key: Array, factor: int) -> Array:
    """``value`` as float32 of exactly ``shape`` (NHWC latents), or ``N(0, I)`` from ``key`` when None."""
    if value is None:
        return jax.random.normal(key, shape, jnp.float32)
    value = jnp.asarray(value, jnp.float32)
    if value.shape != shape:
        raise ConfigError(f"{name} must have shape (N, H / {factor}, W / {factor}, C) = {shape} NHWC (diffusers' NCHW "
                          f"latents, unpacked for FLUX, transposed), got {tuple(value.shape)}")
    return value


def check_batch(what: str, count: int, prompts: int) -> None:
    """``count`` images (or masks) must divide the ``prompts`` they are tiled to, as diffusers tiles them."""
    if prompts % count:
        noun = "masks" if what == "mask_image" else "images"
        raise ConfigError(f"{what} holds {count} {noun} for {prompts} prompts: give one, or one per prompt (any "
                          f"count dividing {prompts}, tiled as diffusers does)")


def preferred_kontext_size(height: int, width: int, multiple: int = 16) -> tuple[int, int]:
    """``(height, width)`` diffusers' ``_auto_resize`` resizes an ``(height, width)`` reference image to: the
    preferred resolution of the nearest aspect ratio, floored to ``multiple``."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return h // multiple * multiple, w // multiple * multiple


def kontext_target_size(height: int, width: int, max_area: int | None, multiple: int) -> tuple[int, int]:
    """The generated size: ``(height, width)`` rescaled to ``max_area`` pixels at the same aspect ratio and floored
    to ``multiple`` (diffusers' ``FluxKontextPipeline.__call__``); unchanged with ``max_area=None``."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    if max_area is None:
        return height, width
    check_positive_int("max_area", max_area)
    aspect = width / height
    w = round((max_area * aspect) ** 0.5) // multiple * multiple
    h = round((max_area / aspect) ** 0.5) // multiple * multiple
    if h <= 0 or w <= 0:
        raise ConfigError(f"max_area={max_area} is too small for a {height}x{width} aspect ratio at multiples of "
                          f"{multiple}: the target would be {h}x{w}")
    return h, w
