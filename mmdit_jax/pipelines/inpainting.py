"""SD3 / SD3.5 inpainting with the plain transformer, equal to diffusers' ``StableDiffusion3InpaintPipeline``.

    inpaint = SD3Inpaint(SD3Pipeline.from_folder(path))
    images = inpaint(prompts, image, mask_image, strength=0.6, seed=0)      (N, H, W, 3) uint8

As ``image_to_image.SD3Img2Img`` (same preprocessing, posterior sample ``x0``, ``t_start``, grid, noise), except:

* ``mask_image (N_m, H, W)`` or ``(N_m, H, W, 1)``, uint8 (``/ 255``) or float in [0, 1], 1 = repaint; binarised
  ``m = [u >= 0.5]`` at image size and downsampled to the latent grid by nearest neighbour, ``m[:, ::f, ::f]``
  (diffusers' mask ``VaeImageProcessor`` with ``do_binarize``, then ``interpolate(mode="nearest")``);
* the start is ``noise`` itself at strength 1 (diffusers' ``is_strength_max``), else
  ``sigma_{t_start} noise + (1 - sigma_{t_start}) x0``;
* after every Euler step ``x <- (1 - m) scale_noise(x0, noise, sigma_{i+1}) + m x`` (``x0`` after the last step):
  ``sdedit.inpaint_flow_match_euler``.

Decoding: diffusers' SD3 inpainting pipeline decodes ``z / scaling_factor`` without adding the VAE's
``shift_factor``, unlike its text-to-image and image-to-image pipelines and its own encoder (which subtracts it).
``decode_shift=True`` (default) decodes ``z / scaling_factor + shift_factor`` like the other pipelines here;
``decode_shift=False`` reproduces diffusers' output.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.sdedit import inpaint_flow_match_euler, scale_noise
from mmdit_jax.pipelines.image_to_image import sdedit_inputs
from mmdit_jax.pipelines.text_to_image import SD3Pipeline, Steering, to_uint8

Array = jax.Array


def preprocess_mask(mask_image: Any, height: int, width: int, factor: int) -> np.ndarray:
    """``(N, H, W)`` / ``(N, H, W, 1)`` / ``(H, W)`` mask -> ``(N, H / f, W / f, 1)`` float32 of 0 and 1."""
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


class SD3Inpaint:
    """Inpainting with the components of an ``SD3Pipeline`` (module docstring)."""

    def __init__(self, pipe: SD3Pipeline):
        self.pipe = pipe
        self._run = jax.jit(self._encode_denoise_decode,
                            static_argnames=("sigmas", "guided", "skip_layers", "remove_pooled", "from_noise",
                                             "decode_shift"))

    @classmethod
    def from_folder(cls, path: Any, **kwargs: Any) -> "SD3Inpaint":
        """``SD3Inpaint(SD3Pipeline.from_folder(path, **kwargs))``."""
        return cls(SD3Pipeline.from_folder(path, **kwargs))

    def _encode_denoise_decode(self, variables: Any, vae_variables: Any, images: Array, posterior_noise: Array | None,
                               noise: Array, mask: Array, cond: dict[str, Any], negative: dict[str, Any] | None,
                               guidance_scale: Array, *, sigmas: tuple[float, ...], guided: bool,
                               skip_layers: tuple[int, ...], remove_pooled: bool, from_noise: bool,
                               decode_shift: bool) -> Array:
        """images ``(N_img, H, W, 3)``, mask ``(N_m, h, w, 1)`` -> decoded images ``(N, H, W, 3)`` float32."""
        pipe, n = self.pipe, noise.shape[0]
        x0 = pipe.encode_images(vae_variables, images, posterior_noise)
        x0 = jnp.tile(x0, (n // x0.shape[0], 1, 1, 1))
        mask = jnp.tile(mask, (n // mask.shape[0], 1, 1, 1))
        sig = np.asarray(sigmas, np.float32)
        x = noise if from_noise else scale_noise(x0, noise, sig[0])
        net = pipe.velocity(pipe.family.prepare(variables), cond, negative, guidance_scale, guided=guided,
                            skip_layers=skip_layers, remove_pooled=remove_pooled)
        z = inpaint_flow_match_euler(net, x, sig, x0, noise, mask)
        return pipe.decode(vae_variables, z, shift=decode_shift)

    def generate(self, prompts: Sequence[str] | str, image: Any, mask_image: Any, strength: float = 0.6,
                 negative_prompts: Sequence[str] | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.0, seed: int = 0, noise: Any = None, posterior_noise: Any = None,
                 sample_posterior: bool = True, decode_shift: bool = True, skip_layers: Sequence[int] = (),
                 remove_pooled: bool = False, steering: Steering | None = None) -> Array:
        """Decoded images ``(N, H, W, 3)`` float32 (about [-1, 1], unclipped): ``image`` repainted where ``mask_image``
        is 1 (module docstring; arguments as ``SD3Img2Img.generate``)."""
        pipe = self.pipe
        inp = sdedit_inputs(pipe, prompts, image, strength, negative_prompts, num_inference_steps, guidance_scale,
                            seed, noise, posterior_noise, sample_posterior, steering, remove_pooled)
        n, (height, width) = inp.noise.shape[0], inp.images.shape[1:3]
        mask = preprocess_mask(mask_image, height, width, pipe.vae_scale_factor)
        if n % mask.shape[0]:
            raise ConfigError(f"mask_image holds {mask.shape[0]} masks for {n} prompts: give one mask, or one per "
                              f"prompt")
        return self._run(pipe.variables, pipe.vae_variables, inp.images, inp.posterior_noise, inp.noise, mask,
                         inp.cond, inp.negative, jnp.float32(guidance_scale), sigmas=inp.sigmas, guided=inp.guided,
                         skip_layers=tuple(int(i) for i in skip_layers), remove_pooled=bool(remove_pooled),
                         from_noise=strength == 1, decode_shift=bool(decode_shift))

    def __call__(self, prompts: Sequence[str] | str, image: Any, mask_image: Any, strength: float = 0.6,
                 **kwargs: Any) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images (``generate``, then diffusers' postprocessing)."""
        return to_uint8(self.generate(prompts, image, mask_image, strength, **kwargs))
