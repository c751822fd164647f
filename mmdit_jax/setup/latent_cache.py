"""Latent training's cache: every training image encoded once by the run's frozen codec
(``mmdit_jax.components.codec.LatentSpace``) and stored in ``<workdir>/latent_cache/latents_<key>.npy``, the key a
fingerprint of the codec (config and weights), the data set's options and the split, so a different VAE or data
set can never be served stale latents. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any, Callable

import numpy as np

from mmdit_jax.components.codec import LatentSpace
from mmdit_jax.data.registry import DatasetSpec
from mmdit_jax.data.text_cache import fingerprint
from mmdit_jax.reporting import report


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
