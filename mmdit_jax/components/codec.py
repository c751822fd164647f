"""Latent codecs: images <-> the latents a diffusion model works on.

``KLCodec`` is the 2D KL autoencoder (``AutoencoderKL``) as traced functions, the codec of pipeline folders and of
latent training; ``WanCodec`` is the Wan 2.1 causal video autoencoder (``models.wan_vae``), which reads an image
as a one-frame video. ``CODECS`` names them (``kl``, ``wan``); folders and latent runs read KL codecs so far.

    encode: z = (mean + exp(logvar / 2) eps - shift_factor) scaling_factor      (eps None: the posterior mean)
    decode: x = D(z / scaling_factor + shift_factor)                            (``shift=False``: D(z / scaling))

Latent training: the diffusion model learns ``z_model = (mean_VAE(x) - shift_factor) * scaling_factor`` instead of
pixels, with a frozen KL autoencoder from a local folder (a diffusers ``vae/`` folder, a pipeline folder with
``vae/`` inside, a single file, or the ``vae/`` folder ``python -m mmdit_jax.train_autoencoder`` writes).

Config (optional section; absent or ``latent.vae = ""`` means pixel space)::

    c.latent = latent_config(vae="/path/to/vae")      # fields: vae, batch_size (images per encoder call)

* Examples are the posterior means (the mode, as most latent trainers cache them), normalised with the VAE's own
  ``scaling_factor`` / ``shift_factor``: ``(H, W, 3)`` images become ``(H/f, W/f, L)`` examples.
* Every training image is encoded once and cached (``mmdit_jax.setup.latent_cache``).
* Samples are decoded, ``x = D(z_model / scaling_factor + shift_factor)``, before they are drawn or scored, so
  grids, ``--mode=sample`` and the study's images are pictures, not latents.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from mmdit_jax.checks import ConfigError, check_keys, check_positive_int
from mmdit_jax.interop.vae import load_vae
from mmdit_jax.models.wan_vae import AutoencoderKLWan, WanVAEConfig
from mmdit_jax.models.wan_vae import denormalize_latents as denormalize_wan_latents
from mmdit_jax.models.wan_vae import normalize_latents as normalize_wan_latents
from mmdit_jax.models.vae import (
    AutoencoderKL,
    VAEConfig,
    denormalize_latents,
    normalize_latents,
)

Array = jax.Array
FIELDS: dict[str, Any] = {"vae": "", "batch_size": 64}


def latent_config(**overrides: Any) -> ml_collections.ConfigDict:
    """A ``latent`` config section: ``vae`` (a local VAE folder or file) and ``batch_size``."""
    check_keys("latent", overrides, FIELDS)
    return ml_collections.ConfigDict({**FIELDS, **overrides})


def latent_vae_path(config: Any) -> str:
    """The configured VAE path, or ``""`` for a pixel-space run."""
    return str(config.latent.vae) if "latent" in config and config.latent.vae else ""


def validate_latent_config(config: Any) -> None:
    if "latent" not in config:
        return
    check_keys("latent", config.latent.keys(), FIELDS)
    check_positive_int("latent.batch_size", config.latent.batch_size)
    path = latent_vae_path(config)
    if path and not os.path.exists(path):
        raise ConfigError(f"latent.vae={path!r} does not exist; give a local VAE folder (config.json + safetensors), "
                          "a pipeline folder with vae/, a .safetensors file, or '' to train in pixel space")


@dataclasses.dataclass
class KLCodec:
    """The KL autoencoder's encode / decode as functions of its variables (call them inside a compiled program)."""

    config: VAEConfig
    variables: Any

    def __post_init__(self) -> None:
        self.module = AutoencoderKL(self.config)
        self.variables = jax.device_put(self.variables)

    @property
    def downscale(self) -> int:
        """Pixels per latent side ``f``."""
        return self.config.downscale

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def encode(self, variables: Any, images: Array, eps: Array | None = None) -> Array:
        """Images ``(B, H, W, 3)`` in [-1, 1] -> model latents ``(B, H/f, W/f, L)``: the posterior sample with noise
        ``eps`` (diffusers' ``retrieve_latents``), or its mean with ``eps=None`` (``sample_mode="argmax"``)."""
        mean, logvar = self.module.apply(variables, images, method="encode")
        z = mean if eps is None else mean + jnp.exp(0.5 * logvar) * eps
        return normalize_latents(z, self.config)

    def decode(self, variables: Any, z: Array, shift: bool = True) -> Array:
        """Model latents ``(B, h, w, L)`` -> decoder output ``(B, f h, f w, 3)``, about [-1, 1]."""
        z = denormalize_latents(z, self.config) if shift else z / self.config.scaling_factor
        return self.module.apply(variables, z, method="decode")


@dataclasses.dataclass
class WanCodec:
    """The Wan VAE's encode / decode as functions of its variables, with ``KLCodec``'s interface:

        encode: z_model = (mean + exp(logvar / 2) eps - latents_mean) / latents_std     (eps None: the mean)
        decode: x = clip(D(z_model * latents_std + latents_mean), -1, 1)

    Images ``(B, H, W, C)`` are one-frame videos (the exact 2D reduction); videos are ``(B, T, H, W, C)``,
    ``T = 1 + 4 k``, with latents ``(B, 1 + 4 k / f_t, h, w, z)``.
    """

    config: WanVAEConfig
    variables: Any

    def __post_init__(self) -> None:
        self.module = AutoencoderKLWan(self.config)
        self.variables = jax.device_put(self.variables)

    @property
    def downscale(self) -> int:
        """Pixels per latent side ``f_s``."""
        return self.config.spatial_downscale

    @property
    def latent_channels(self) -> int:
        return self.config.z_dim

    def encode(self, variables: Any, images: Array, eps: Array | None = None) -> Array:
        """Images ``(B, H, W, C)`` or videos ``(B, T, H, W, C)`` in [-1, 1] -> model latents of the same rank."""
        video = images if images.ndim == 5 else images[:, None]
        mean, logvar = self.module.apply(variables, video, method="encode")
        if eps is not None:
            mean = mean + jnp.exp(0.5 * logvar) * (eps if images.ndim == 5 else eps[:, None])
        z = normalize_wan_latents(mean, self.config)
        return z if images.ndim == 5 else z[:, 0]

    def decode(self, variables: Any, z: Array) -> Array:
        """Model latents ``(B, h, w, z)`` or ``(B, t, h, w, z)`` -> pixels of the same rank, in [-1, 1]."""
        video = z if z.ndim == 5 else z[:, None]
        x = self.module.apply(variables, denormalize_wan_latents(video, self.config), method="decode")
        return x if z.ndim == 5 else x[:, 0]


# name -> codec class: what ``latent.codec`` (and a pipeline folder's ``vae/``) is read as
CODECS: dict[str, type] = {"kl": KLCodec, "wan": WanCodec}


@dataclasses.dataclass
class LatentSpace:
    """A frozen VAE and the normalisation that maps its latents to the diffusion model's examples."""

    config: VAEConfig
    variables: Any
    path: str

    @classmethod
    def from_config(cls, config: Any) -> "LatentSpace | None":
        """The run's latent space, or None for pixel space."""
        path = latent_vae_path(config)
        if not path:
            return None
        validate_latent_config(config)
        return _load(os.path.abspath(path), os.path.getmtime(path))

    def example_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(H, W, C)`` images -> ``(H/f, W/f, L)`` examples; sizes must be multiples of the VAE's factor."""
        f = self.config.downscale
        if len(image_shape) != 3 or image_shape[-1] != self.config.in_channels:
            raise ConfigError(f"latent.vae={self.path!r} encodes (H, W, {self.config.in_channels}) images; the data "
                              f"set's examples are {tuple(image_shape)}")
        h, w, _ = image_shape
        if h % f or w % f:
            raise ConfigError(f"data image size {h}x{w} is not divisible by the VAE's downscale factor {f} "
                              f"(latent.vae={self.path!r})")
        return (h // f, w // f, self.config.latent_channels)

    def encode(self, images: Array) -> Array:
        """Images ``(B, H, W, 3)`` in [-1, 1] -> normalised posterior means ``(B, H/f, W/f, L)`` float32."""
        return _programs(self.config)[0](self.variables, jnp.asarray(images, jnp.float32))

    def decode(self, z_model: Array) -> Array:
        """Normalised latents ``(B, h, w, L)`` -> images ``(B, f h, f w, 3)`` float32, about [-1, 1]."""
        return _programs(self.config)[1](self.variables, jnp.asarray(z_model, jnp.float32))

    def fingerprint_parts(self) -> tuple[Any, ...]:
        # strings inside tuples: ``fingerprint`` reads a bare string naming a folder as that folder's files
        return (dataclasses.asdict(self.config), self.variables, ("latent", "posterior_mean"))


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> LatentSpace:
    # Validation, training and sampling each ask for the run's latent space: the weights are read once
    # (per modification time of the path).
    vae_cfg, variables = load_vae(path)
    return LatentSpace(vae_cfg, jax.device_put(variables), path)


@functools.lru_cache(maxsize=4)
def _programs(cfg: VAEConfig) -> tuple[Callable[..., Array], Callable[..., Array]]:
    """The compiled ``(encode, decode)`` of one VAE architecture."""
    codec = KLCodec(cfg, {})
    return jax.jit(codec.encode), jax.jit(codec.decode)
