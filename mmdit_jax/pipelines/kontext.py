"""FLUX.1 Kontext image editing from a local diffusers pipeline folder, equal to diffusers' ``FluxKontextPipeline``
called with ``_auto_resize=False``.

    kontext = FluxKontextPipeline.from_folder("/path/to/FLUX.1-Kontext-dev")
    images = kontext(prompts, image, max_area=None, height=1024, width=1024, seed=0)     (N, H, W, 3) uint8

On top of ``flux.FluxPipeline`` (same text path, grid, guidance and decoder):

* ``image (N_img, H', W', 3)`` uint8 or float in [0, 1] -> ``2 u - 1``; nothing is resized: ``H'`` and ``W'`` must be
  multiples of ``size_multiple`` (diffusers would floor them and, with ``_auto_resize``, resize to the nearest
  ``PREFERRED_KONTEXT_RESOLUTIONS`` aspect; ``preferred_kontext_size`` gives that size, to resize to beforehand);
* reference latents ``(mean - shift_factor) scaling_factor`` of the VAE posterior *mode* (diffusers'
  ``retrieve_latents(sample_mode="argmax")``: no randomness), tiled to the N prompts;
* every step the family appends the packed reference tokens after the target's, with ids ``(1, row, col)``
  (target: ``(0, row, col)``), and keeps the target's part of the prediction; the reference is never noised;
* ``mu`` from the target's token count only;
* the target size: diffusers' rule — ``height`` / ``width`` (default ``128 f``) rescaled to ``max_area`` pixels at
  their aspect ratio, floored to ``size_multiple``; ``max_area=None`` keeps them (they must then be multiples).

Encode, loop and decode are one compiled program per (shapes, steps, options). ``image=None`` is text-to-image.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.families.flux import image_ids
from mmdit_jax.pipelines.flux import FLUX_LAYOUT, FluxPipeline
from mmdit_jax.pipelines.image_to_image import preprocess_images
from mmdit_jax.pipelines.text_to_image import Steering, noise_or, to_uint8

Array = jax.Array

# (width, height) pairs Kontext was trained at (diffusers' pipeline_flux_kontext, BFL's util.py)
PREFERRED_KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)
DEFAULT_MAX_AREA = 1024 ** 2


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


class FluxKontextPipeline:
    """Kontext editing with the components of a ``FluxPipeline`` (module docstring)."""

    def __init__(self, pipe: FluxPipeline):
        self.pipe = pipe
        self._run = jax.jit(self._encode_denoise_decode, static_argnames=("sigmas", "guided", "remove_pooled"))

    @classmethod
    def from_folder(cls, path: Any, **kwargs: Any) -> "FluxKontextPipeline":
        """``FluxKontextPipeline(FluxPipeline.from_folder(path, **kwargs))`` (a ``FluxKontextPipeline`` folder)."""
        return cls(FluxPipeline.from_folder(path, **kwargs))

    def token_ids(self, height: int, width: int, reference: tuple[int, int] | None) -> np.ndarray:
        """``(N + N_ref, 3)`` ids of the image tokens for an ``(height, width)`` target and an ``reference = (H',
        W')`` image (pixels): the target's ``(0, row, col)``, then the reference's ``(1, row, col)``."""
        f = self.pipe.vae_scale_factor
        ref = None if reference is None else (reference[0] // f, reference[1] // f)
        return image_ids(height // f, width // f, ref)

    def _encode_denoise_decode(self, variables: Any, vae_variables: Any, images: Array | None, latents: Array,
                               cond: dict[str, Any], negative: dict[str, Any] | None, true_cfg_scale: Array, *,
                               sigmas: tuple[float, ...], guided: bool, remove_pooled: bool) -> Array:
        """images ``(N_img, H', W', 3)`` (or None), latents ``(N, h, w, C)`` -> decoded images ``(N, H, W, 3)``."""
        pipe = self.pipe
        if images is not None:
            ref = pipe.encode_images(vae_variables, images)
            ref = jnp.tile(ref, (latents.shape[0] // ref.shape[0], 1, 1, 1))
            cond = {**cond, "reference": ref}
            negative = None if negative is None else {**negative, "reference": ref}
        return pipe.denoise_and_decode(variables, vae_variables, latents, cond, negative, true_cfg_scale, sigmas,
                                       guided, remove_pooled)

    def generate(self, prompts: Sequence[str] | str, image: Any, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 28, guidance_scale: float = 3.5, seed: int = 0,
                 latents: Any = None, *, max_area: int | None = DEFAULT_MAX_AREA,
                 negative_prompts: Sequence[str] | None = None, true_cfg_scale: float = 1.0,
                 sigmas: Sequence[float] | None = None, remove_pooled: bool = False,
                 steering: Steering | None = None) -> Array:
        """Decoded images ``(N, H, W, 3)`` float32 (about [-1, 1], unclipped) for N prompts editing ``image``.

        ``image``: ``(N_img, H', W', 3)`` or ``(H', W', 3)``, uint8 or float in [0, 1], ``N_img`` dividing N (tiled),
        ``H'`` and ``W'`` multiples of ``size_multiple``; None for text-to-image. ``H, W``: ``kontext_target_size``
        of ``height`` / ``width`` (defaults ``128 f``, diffusers') and ``max_area``. ``latents``: the starting noise
        ``(N, H / f, W / f, C)`` NHWC. The other arguments are ``FluxPipeline.generate``'s.
        """
        pipe = self.pipe
        cond, negative, guided = pipe.conditioning(prompts, negative_prompts, guidance_scale, true_cfg_scale,
                                                   steering, remove_pooled)
        n = cond["context"].shape[0]
        height, width = kontext_target_size(pipe.default_size if height is None else height,
                                            pipe.default_size if width is None else width, max_area,
                                            pipe.size_multiple)
        pipe.check_size(height, width)
        images = None
        if image is not None:
            images = preprocess_images(image)
            pipe.check_size(*images.shape[1:3], names=("image height", "image width"))
            if n % images.shape[0]:
                raise ConfigError(f"image holds {images.shape[0]} images for {n} prompts: give one image, or one "
                                  f"per prompt (any N_img dividing {n}, tiled as diffusers does)")
        num_inference_steps = len(sigmas) if sigmas is not None else num_inference_steps
        check_positive_int("num_inference_steps", num_inference_steps)
        shape = pipe.latent_shape(n, height, width)
        latents = noise_or("latents", latents, shape, jax.random.PRNGKey(seed), pipe.vae_scale_factor, FLUX_LAYOUT)
        grid, _ = pipe.schedule(num_inference_steps, shape[1], shape[2], sigmas)   # mu: target tokens only
        return self._run(pipe.variables, pipe.vae_variables, images, latents, cond, negative,
                         jnp.float32(true_cfg_scale), sigmas=tuple(float(s) for s in grid), guided=guided,
                         remove_pooled=bool(remove_pooled))

    def __call__(self, prompts: Sequence[str] | str, image: Any, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 28, guidance_scale: float = 3.5, seed: int = 0,
                 latents: Any = None, **options: Any) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images (``generate``, then diffusers' postprocessing)."""
        return to_uint8(self.generate(prompts, image, height, width, num_inference_steps, guidance_scale, seed,
                                      latents, **options))
