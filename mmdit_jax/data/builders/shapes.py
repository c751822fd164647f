"""TFDS builder of the ``shapes`` data (images, captions, ground-truth attributes), generated locally."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mmdit_jax.data.shapes import example


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    image_size: int = 32
    num_train: int = 20_000
    num_test: int = 1_000
    max_objects: int = 1
    seed: int = 0
    captions: str = "full"


def shapes_config(image_size: int = 32, num_train: int = 20_000, num_test: int = 1_000, max_objects: int = 1,
                  seed: int = 0, captions: str = "full") -> ShapesConfig:
    """A config whose name encodes every generation parameter (so different data never share a folder; the default
    caption set adds nothing, so folders written before caption sets existed keep their names)."""
    name = f"s{image_size}_n{num_train}_{num_test}_o{max_objects}_seed{seed}"
    name += "" if captions == "full" else f"_{captions}"
    return ShapesConfig(name=name, version="1.0.0", image_size=image_size, num_train=num_train,
                        num_test=num_test, max_objects=max_objects, seed=seed, captions=captions)


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Procedural captioned shapes; train and test streams use disjoint seeds."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [shapes_config()]

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            **{k: np.int64 for k in ("shape", "colour", "size", "position", "num_objects", "template")},
        }))

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {"train": self._generate_examples(2 * cfg.seed, cfg.num_train),
                "test": self._generate_examples(2 * cfg.seed + 1, cfg.num_test)}

    def _generate_examples(self, stream: int, n: int):
        cfg = self.builder_config
        for i in range(n):
            yield i, example(i, stream, cfg.image_size, cfg.max_objects, cfg.captions)
