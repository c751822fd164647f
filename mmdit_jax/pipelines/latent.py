"""Latent training: the diffusion model learns ``z_model = (mean_VAE(x) - shift_factor) * scaling_factor`` instead of
pixels, with a frozen KL autoencoder from a local folder (a diffusers ``vae/`` folder, a pipeline folder with
``vae/`` inside, a single file, or the ``vae/`` folder ``python -m mmdit_jax.train_autoencoder`` writes).

Config (optional section; absent or ``latent.vae = ""`` means pixel space)::

    c.latent = latent_config(vae="/path/to/vae")      # fields: vae, batch_size (images per encoder call)

* Examples are the posterior means (the mode, as most latent trainers cache them), normalised with the VAE's own
  ``scaling_factor`` / ``shift_factor``: ``(H, W, 3)`` images become ``(H/f, W/f, L)`` examples.
* Every training image is encoded once and cached in ``<workdir>/latent_cache/latents_<key>.npy``, the key a
  fingerprint of the VAE (config and weights), the data set's options and the split: a different VAE or data set
  can never be served stale latents. Writes are atomic (temporary file, then rename).
* Samples are decoded, ``x = D(z_model / scaling_factor + shift_factor)``, before they are drawn or scored, so
  grids, ``--mode=sample`` and the study's images are pictures, not latents.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmdit_jax.checks import ConfigError, check_keys, check_positive_int
from mmdit_jax.data.registry import DatasetSpec
from mmdit_jax.data.text_cache import fingerprint
from mmdit_jax.interop.vae import load_vae
from mmdit_jax.models.vae import (
    AutoencoderKL,
    VAEConfig,
    denormalize_latents,
    normalize_latents,
)
from mmdit_jax.reporting import report

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
    model = AutoencoderKL(cfg)
    encode = jax.jit(lambda v, x: normalize_latents(model.apply(v, x, method="encode")[0], cfg))
    decode = jax.jit(lambda v, z: model.apply(v, denormalize_latents(z, cfg), method="decode"))
    return encode, decode


def encode_split(space: LatentSpace, source: Any, spec: DatasetSpec, data_config: Any, split: str, cache_dir: str,
                 batch_size: int) -> np.ndarray:
    """``(N, h, w, L)`` float32 latents of every record of ``source`` in record order, cached on disk."""
    # data_dir matters only for data read from disk; the generated sets are fixed by their options
    ignored = ("batch_size", "num_workers") + (("data_dir",) if spec.generated else ())
    data_options = sorted((k, v) for k, v in data_config.items() if k not in ignored)
    key = fingerprint(*space.fingerprint_parts(), data_options, ("split", split), len(source))
    path = os.path.join(cache_dir, f"latents_{key}.npy")
    if os.path.exists(path):
        return np.load(path)
    report(f"latent cache: encoding {len(source)} {split} images with {space.path}")
    latents = encode_records(space, source, spec, batch_size)
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp.npy")   # unique even across hosts sharing the folder
    with os.fdopen(fd, "wb") as f:
        np.save(f, latents)
    os.replace(tmp, path)
    return latents


def encode_records(space: LatentSpace, source: Any, spec: DatasetSpec, batch_size: int) -> np.ndarray:
    """``(N, h, w, L)`` float32 latents of every record of ``source`` (images by ``spec.to_example``), in record
    order, ``batch_size`` at a time (the last batch padded: one compiled shape)."""
    parts = []
    for start in range(0, len(source), batch_size):
        images = np.stack([spec.to_example(source[i]) for i in range(start, min(start + batch_size, len(source)))])
        n = len(images)
        if n < batch_size:
            images = np.concatenate([images, np.repeat(images[-1:], batch_size - n, 0)])
        parts.append(np.asarray(space.encode(images))[:n])
    return np.concatenate(parts).astype(np.float32)


class LatentRecords:
    """A source whose records carry their cached latent: ``source[i] | {"latent": latents[i]}``."""

    def __init__(self, source: Any, latents: np.ndarray):
        if len(source) != len(latents):
            raise ValueError(f"{len(latents)} latents for {len(source)} records")
        self._source, self._latents = source, latents

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        return {**self._source[i], "latent": self._latents[i].copy()}


def latent_spec(spec: DatasetSpec, space: LatentSpace) -> DatasetSpec:
    """The data set's spec with examples read from the cached latents (``LatentRecords``); pictures are drawn from
    decoded samples, so ``render`` is the image data set's own."""
    to_latent: Callable[[dict], np.ndarray] = lambda record: np.asarray(record["latent"], np.float32)  # noqa: E731
    return dataclasses.replace(spec, to_example=to_latent,
                               example_shape=lambda cfg: space.example_shape(tuple(spec.example_shape(cfg))))
