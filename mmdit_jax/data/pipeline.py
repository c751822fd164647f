"""TFDS (ArrayRecord) sources read with grain: per-process sharding, per-epoch shuffling, checkpointable state.

``build_sources(data_config, data_dir)`` prepares the data set chosen by name (``registry.DATASETS``) locally
(deterministic, no download) and returns random-access sources per split; ``train_iterator(...)`` yields batches forever. Its state is the
number of batches consumed, so a restored iterator continues with exactly the batches an uninterrupted run
would have seen.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import grain
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.data.captions import caption_text
from mmdit_jax.data.registry import DatasetSpec, dataset_spec


def build_sources(cfg: Any, data_dir: str) -> dict[str, Any]:
    """``{"train": source, "test": source}`` of random-access records (dicts of numpy arrays / bytes).

    The built-in data sets are generated locally on first use; a TFDS data set by name must already be
    prepared (in array_record format) under ``data_dir``: nothing is ever downloaded.
    """
    spec = dataset_spec(cfg.name)
    builder = spec.builder(cfg, data_dir)
    if spec.generated:
        import jax

        if jax.process_index() == 0 and not builder.is_prepared():
            builder.download_and_prepare()
        if jax.process_count() > 1:  # the others wait until process 0 has written the files
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"prepared {cfg.name}")
            builder = spec.builder(cfg, data_dir)
        return {split: _mapped(in_memory(src), spec) for split, src in builder.as_data_source().items()}
    try:
        raw = {split: builder.as_data_source(split=split) for split in ("train", "test")}
    except Exception as e:
        raise ConfigError(f"data set {getattr(cfg, 'tfds_name', cfg.name)!r} is not prepared in {data_dir!r} in "
                          f"array_record format; this code never downloads: prepare it locally and set data.data_dir "
                          f"({e})") from e
    label = builder.info.features["label"] if "label" in builder.info.features else None
    names = list(label.names) if label is not None and hasattr(label, "names") else None
    normalize = generic_record(cfg.image_size, names)
    return {split: _mapped(grain.MapDataset.source(src).map(normalize), spec) for split, src in raw.items()}


def _mapped(source: Any, spec: DatasetSpec) -> Any:
    """``source`` with ``spec.record_map`` applied to every record (random access and length kept)."""
    if spec.record_map is None:
        return source
    return grain.MapDataset.source(source).map(spec.record_map)


IN_MEMORY_LIMIT_BYTES = 2 << 30


class InMemorySource:
    """A random-access source decoded once into one array per field: ``source[i]`` is the same dict of numpy values
    as the wrapped source's, without decoding the record again.

    Why: decoding a TFDS record (all its features, through the example parser) on every read costs CPU time per
    batch that is taken from the cores an XLA:CPU train step uses (measurements: experiments/benchmarks/RESULTS.md).
    """

    def __init__(self, records: list[dict]):
        self._columns = {k: np.stack([r[k] for r in records]) if isinstance(records[0][k], np.ndarray)
                         else np.array([r[k] for r in records], dtype=object) for k in records[0]}

    def __len__(self) -> int:
        return len(next(iter(self._columns.values())))

    def __getitem__(self, i: int) -> dict:
        # Array fields are copied, as a decoding source returns fresh arrays: a caller's edit cannot reach the cache.
        return {k: v[i] if v.dtype == object else v[i].copy() for k, v in self._columns.items()}


def in_memory(source: Any, limit_bytes: int = IN_MEMORY_LIMIT_BYTES) -> Any:
    """``source`` decoded into memory (``InMemorySource``) if its first record times its length fits in
    ``limit_bytes`` (the built-in data sets: 31 MB for 10,000 shapes at 32 x 32); else ``source`` itself."""
    if len(source) == 0:
        return source
    first = source[0]
    per_record = sum(v.nbytes if isinstance(v, np.ndarray) else 64 for v in first.values())
    if per_record * len(source) > limit_bytes:
        return source
    return InMemorySource([first] + [source[i] for i in range(1, len(source))])


def _resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
    rows = (np.arange(size) * image.shape[0]) // size
    cols = (np.arange(size) * image.shape[1]) // size
    return image[rows][:, cols]


def generic_record(image_size: int, label_names: list[str] | None) -> Callable[[dict], dict]:
    """Any TFDS image record -> ``{"image": (S, S, 3) uint8, "caption": str}`` (caption from the label name)."""

    def f(record: dict) -> dict:
        img = np.asarray(record["image"])
        img = img[..., None] if img.ndim == 2 else img
        img = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3]
        if "caption" in record:
            cap = record["caption"]
        elif "label" in record:
            lab = int(record["label"])
            cap = f"a photo of {label_names[lab].replace('_', ' ') if label_names else lab}"
        else:
            cap = ""
        return {"image": _resize_nearest(img.astype(np.uint8), image_size), "caption": cap}

    return f


def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_iterator(source: Any, global_batch_size: int, seed: int, transform: Callable[[dict], dict],
                   process_index: int = 0, process_count: int = 1, num_workers: int = 0) -> grain.DatasetIterator:
    """Infinite iterator of this process's part of each global batch, reshuffled every epoch.

    The global batch sequence depends only on ``seed`` (one permutation of the whole source per epoch), and
    process ``p`` reads rows ``[p B/P, (p+1) B/P)`` of every global batch: so 1 process or P processes train
    on exactly the same data, and each process only loads its own rows.
    """
    check_positive_int("data.batch_size", global_batch_size)
    if global_batch_size % process_count:
        raise ConfigError(f"data.batch_size={global_batch_size} is not divisible by the process count {process_count}")
    n = len(source)
    if n < global_batch_size:
        raise ConfigError(f"the dataset has {n} examples, fewer than one batch of data.batch_size={global_batch_size}")
    local = global_batch_size // process_count
    cache: dict[int, np.ndarray] = {}

    def permuted(i: int) -> int:
        epoch, pos = divmod(i, n)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = _epoch_permutation(n, seed, epoch)
        return int(cache[epoch][pos])

    def load(indices: np.ndarray) -> dict:
        rows = [transform(source[int(i)]) for i in indices[process_index * local:(process_index + 1) * local]]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    ds = grain.MapDataset.range(n).repeat(None).map(permuted).batch(global_batch_size, drop_remainder=True).map(load)
    # grain's default (16 threads, 500 elements ahead) would load 500 *batches* up front on a few cores shared
    # with the train step; a few batches ahead on two threads keeps the step fed (experiments/benchmarks/RESULTS.md).
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app use the defaults
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)


def example_transform(spec: DatasetSpec, caption_index: dict[str, int] | None) -> Callable[[dict], dict]:
    """Record -> ``{"x": float32 example, "text_index": int}`` (the caption's row in the embedding cache;
    left out when ``caption_index`` is None, i.e. unconditional training), plus ``"loss_weight"`` (float32) for
    sources whose records weigh their examples (DreamBooth's prior-preservation images), plus
    ``"cond/<name>"`` (float32, [-1, 1]) for each image condition ``spec.conditions(record)`` gives (an edit's
    ``cond/source``; the trainer moves these into the batch's conditioning bundle)."""

    def f(record: dict) -> dict:
        out = {"x": spec.to_example(record)}
        if caption_index is not None:
            out["text_index"] = np.int32(caption_index[caption_text(record)])
        if "loss_weight" in record:
            out["loss_weight"] = np.float32(record["loss_weight"])
        if spec.conditions is not None:
            for name, value in spec.conditions(record).items():
                out[f"cond/{name}"] = np.asarray(value, np.float32)
        return out

    return f


def captions_of(source: Any) -> list[str]:
    """All captions of a split, in record order."""
    return [caption_text(source[i]) for i in range(len(source))]


def default_data_dir(workdir: str) -> str:
    return os.path.join(workdir, "tfds")
