"""SD3 / SD3.5 image-to-image (SDEdit), equal to diffusers' ``StableDiffusion3Img2ImgPipeline``.

    img2img = SD3Img2Img(SD3Pipeline.from_folder(path))       # shares the pipeline's weights and text encoders
    images = img2img(prompts, image, strength=0.6, seed=0)      (N, H, W, 3) uint8

With ``n`` steps and strength ``s`` (``mmdit_jax.diffusion.sdedit``):

* ``image (N_img, H, W, 3)`` uint8 or float in [0, 1] -> ``2 u - 1`` (``VaeImageProcessor.preprocess``; no resize:
  ``H`` and ``W`` must be multiples of the VAE factor x patch size);
* VAE posterior sample ``z = mean + exp(logvar / 2) eps_post`` (``retrieve_latents``, ``sample_mode="sample"``),
  ``x0 = (z - shift_factor) scaling_factor``, tiled to the N prompts;
* ``t_start = img2img_start(n, s)``, the grid ``sigmas[t_start:]`` of the text-to-image pipeline (same ``mu``);
* ``x = sigma_{t_start} noise + (1 - sigma_{t_start}) x0``, then the text-to-image Euler loop (CFG included) and
  decoder from there.

Randomness: ``posterior_noise (N_img, h, w, C)`` and ``noise (N, h, w, C)`` NHWC may be given (diffusers draws them
in that order from one generator); else both come from ``PRNGKey(seed)``. ``sample_posterior=False`` uses the
posterior mean. Encode, loop and decode are one compiled program per (shapes, steps, options).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.flow_match import flow_match_euler
from mmdit_jax.diffusion.sdedit import img2img_start, scale_noise
from mmdit_jax.pipelines.text_to_image import SD3Pipeline, Steering, to_uint8

Array = jax.Array


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


@dataclasses.dataclass
class SDEditInputs:
    """What an SDEdit-style call hands its compiled program (host-side checks done)."""

    images: np.ndarray                 # (N_img, H, W, 3) in [-1, 1]
    posterior_noise: Array | None      # (N_img, h, w, C) or None for the posterior mean
    noise: Array                       # (N, h, w, C)
    cond: dict[str, Any]
    negative: dict[str, Any] | None
    guided: bool
    sigmas: tuple[float, ...]          # sigmas[t_start:] of the pipeline's grid


def sdedit_inputs(pipe: SD3Pipeline, prompts: Sequence[str] | str, image: Any, strength: float,
                  negative_prompts: Sequence[str] | None, num_inference_steps: int, guidance_scale: float, seed: int,
                  noise: Any, posterior_noise: Any, sample_posterior: bool, steering: Steering | None,
                  remove_pooled: bool) -> SDEditInputs:
    """Prompts, image, grid and noise of an image-to-image or inpainting call, checked as diffusers checks them."""
    t_start = img2img_start(num_inference_steps, strength)
    cond, negative, guided = pipe.conditioning(prompts, negative_prompts, guidance_scale, steering, remove_pooled)
    images = preprocess_images(image)
    n, n_img, (height, width) = cond["context"].shape[0], images.shape[0], images.shape[1:3]
    pipe.check_size(height, width)
    if n % n_img:
        raise ConfigError(f"image holds {n_img} images for {n} prompts: give one image, or one per prompt "
                          f"(any N_img dividing {n}, tiled as diffusers does)")
    shape = pipe.latent_shape(n, height, width)
    key_posterior, key_noise = jax.random.split(jax.random.PRNGKey(seed))
    eps = (pipe.noise("posterior_noise", posterior_noise, (n_img,) + shape[1:], key_posterior) if sample_posterior
           else None)
    if not sample_posterior and posterior_noise is not None:
        raise ConfigError("posterior_noise is unused with sample_posterior=False (the posterior mean is taken)")
    sigmas = pipe.grid(num_inference_steps, shape[1], shape[2])[t_start:]
    return SDEditInputs(images, eps, pipe.noise("noise", noise, shape, key_noise), cond, negative, guided,
                        tuple(float(s) for s in sigmas))


class SD3Img2Img:
    """SDEdit with the components of an ``SD3Pipeline`` (module docstring)."""

    def __init__(self, pipe: SD3Pipeline):
        self.pipe = pipe
        self._run = jax.jit(self._encode_denoise_decode,
                            static_argnames=("sigmas", "guided", "skip_layers", "remove_pooled"))

    @classmethod
    def from_folder(cls, path: Any, **kwargs: Any) -> "SD3Img2Img":
        """``SD3Img2Img(SD3Pipeline.from_folder(path, **kwargs))``."""
        return cls(SD3Pipeline.from_folder(path, **kwargs))

    def _encode_denoise_decode(self, variables: Any, vae_variables: Any, images: Array, posterior_noise: Array | None,
                               noise: Array, cond: dict[str, Any], negative: dict[str, Any] | None,
                               guidance_scale: Array, *, sigmas: tuple[float, ...], guided: bool,
                               skip_layers: tuple[int, ...], remove_pooled: bool) -> Array:
        """images ``(N_img, H, W, 3)`` -> decoded images ``(N, H, W, 3)`` float32."""
        pipe = self.pipe
        x0 = pipe.encode_images(vae_variables, images, posterior_noise)
        x0 = jnp.tile(x0, (noise.shape[0] // x0.shape[0], 1, 1, 1))
        sig = np.asarray(sigmas, np.float32)
        net = pipe.velocity(pipe.family.prepare(variables), cond, negative, guidance_scale, guided=guided,
                            skip_layers=skip_layers, remove_pooled=remove_pooled)
        z = flow_match_euler(net, scale_noise(x0, noise, sig[0]), sig)
        return pipe.decode(vae_variables, z)

    def generate(self, prompts: Sequence[str] | str, image: Any, strength: float = 0.6,
                 negative_prompts: Sequence[str] | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 7.0, seed: int = 0, noise: Any = None, posterior_noise: Any = None,
                 sample_posterior: bool = True, skip_layers: Sequence[int] = (), remove_pooled: bool = False,
                 steering: Steering | None = None) -> Array:
        """Decoded images ``(N, H, W, 3)`` float32 (about [-1, 1], unclipped) for N prompts edited from ``image``.

        ``strength`` in (0, 1]: the fraction of the grid run (1: from pure noise). Defaults are diffusers'.
        """
        inp = sdedit_inputs(self.pipe, prompts, image, strength, negative_prompts, num_inference_steps,
                            guidance_scale, seed, noise, posterior_noise, sample_posterior, steering, remove_pooled)
        return self._run(self.pipe.variables, self.pipe.vae_variables, inp.images, inp.posterior_noise, inp.noise,
                         inp.cond, inp.negative, jnp.float32(guidance_scale), sigmas=inp.sigmas, guided=inp.guided,
                         skip_layers=tuple(int(i) for i in skip_layers), remove_pooled=bool(remove_pooled))

    def __call__(self, prompts: Sequence[str] | str, image: Any, strength: float = 0.6,
                 **kwargs: Any) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images (``generate``, then diffusers' postprocessing)."""
        return to_uint8(self.generate(prompts, image, strength, **kwargs))
