"""TFDS (ArrayRecord) sources read with grain: per-process sharding, per-epoch shuffling, checkpointable state.

``build_sources(data_config, data_dir)`` prepares the chosen builder locally (deterministic, no download) and
returns random-access sources per split; ``train_iterator(...)`` yields batches forever. Its state is the
number of batches consumed, so a restored iterator continues with exactly the batches an uninterrupted run
would have seen.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import grain
import numpy as np
import tensorflow_datasets as tfds

from mmdit_jax.validation import ConfigError, check_choice, check_positive_int

DATASETS = ("shapes", "digits", "toy2d", "tfds")


def _builder(cfg: Any, data_dir: str):
    name = cfg.name
    check_choice("data.name", name, DATASETS)
    if name == "shapes":
        from mmdit_jax.data.builders.shapes import Shapes, shapes_config

        return Shapes(config=shapes_config(cfg.image_size, cfg.num_train, cfg.num_test, cfg.max_objects, cfg.seed),
                      data_dir=data_dir, file_format="array_record")
    if name == "digits":
        from mmdit_jax.data.builders.digits import Digits, digits_config

        return Digits(config=digits_config(cfg.image_size), data_dir=data_dir, file_format="array_record")
    if name == "toy2d":
        from mmdit_jax.data.builders.toy2d import Toy2D

        return Toy2D(data_dir=data_dir, file_format="array_record")
    try:
        builder = tfds.builder(cfg.tfds_name, data_dir=data_dir)
    except Exception as e:  # tfds raises its own DatasetNotFoundError subclasses
        raise ConfigError(f"data.tfds_name={cfg.tfds_name!r} is not a TFDS dataset: {e}") from e
    if not builder.is_prepared():
        raise ConfigError(f"TFDS dataset {cfg.tfds_name!r} is not prepared in {data_dir!r}; this code never "
                          "downloads: prepare it locally (in array_record format) and set data.data_dir")
    return builder


def build_sources(cfg: Any, data_dir: str) -> dict[str, Any]:
    """``{"train": source, "test": source}`` of random-access records (dicts of numpy arrays / bytes)."""
    builder = _builder(cfg, data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return builder.as_data_source()


def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_iterator(source: Any, batch_size: int, seed: int, transform: Callable[[dict], dict],
                   process_index: int = 0, process_count: int = 1, num_workers: int = 0) -> grain.DatasetIterator:
    """Infinite iterator of batches (this process's ``batch_size`` examples), reshuffled every epoch.

    Each process reads a disjoint strided shard of the source (``process_index::process_count``).
    """
    check_positive_int("data.batch_size (per process)", batch_size)
    shard = grain.MapDataset.source(source).slice(slice(process_index, None, process_count))
    n = len(shard)
    if n < batch_size:
        raise ConfigError(f"the dataset shard has {n} examples, fewer than one batch of {batch_size}")
    cache: dict[int, np.ndarray] = {}

    def permuted(i: int) -> int:
        epoch, pos = divmod(i, n)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = _epoch_permutation(n, seed, epoch)
        return int(cache[epoch][pos])

    ds = grain.MapDataset.range(n).repeat(None).map(permuted).map(lambda i: transform(shard[i]))
    it_ds = ds.batch(batch_size, drop_remainder=True).to_iter_dataset()
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)


def image_transform(caption_index: dict[str, int] | None) -> Callable[[dict], dict]:
    """Record -> ``{"image": (H, W, 3) float32 in [-1, 1], "text_index": int}``."""

    def f(record: dict) -> dict:
        out = {"image": record["image"].astype(np.float32) / 127.5 - 1.0}
        if caption_index is not None:
            cap = record["caption"]
            out["text_index"] = np.int32(caption_index[cap.decode() if isinstance(cap, bytes) else cap])
        return out

    return f


def captions_of(source: Any) -> list[str]:
    """All captions of a split, in record order."""
    out = []
    for i in range(len(source)):
        cap = source[i]["caption"]
        out.append(cap.decode() if isinstance(cap, bytes) else cap)
    return out


def default_data_dir(workdir: str) -> str:
    return os.path.join(workdir, "tfds")
