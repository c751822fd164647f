"""TFDS builder of the ``shape_edits`` data (source image, instruction, target image, attributes), generated
locally. Train: stream 2 * seed with the training phrasings; test: stream 2 * seed + 1 with the held-out phrasing
of every edit type only (``edits.HELD_OUT``), so test scores measure generalisation to new wording."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mmdit_jax.data.edits import ATTRIBUTE_WIDTH, MAX_OBJECTS, edit_example


@dataclasses.dataclass
class ShapeEditsConfig(tfds.core.BuilderConfig):
    image_size: int = 32
    num_train: int = 10_000
    num_test: int = 1_000
    max_objects: int = 3
    seed: int = 0


def shape_edits_config(image_size: int = 32, num_train: int = 10_000, num_test: int = 1_000, max_objects: int = 3,
                       seed: int = 0) -> ShapeEditsConfig:
    """A config whose name encodes every generation parameter (so different data never share a folder)."""
    name = f"s{image_size}_n{num_train}_{num_test}_o{max_objects}_seed{seed}"
    return ShapeEditsConfig(name=name, version="1.0.0", image_size=image_size, num_train=num_train,
                            num_test=num_test, max_objects=max_objects, seed=seed)


class ShapeEdits(tfds.core.GeneratorBasedBuilder):
    """Procedural instruction-editing triplets on shapes scenes; train and test streams use disjoint seeds."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [shape_edits_config()]

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        image = tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8)
        objects = tfds.features.Tensor(shape=(MAX_OBJECTS, ATTRIBUTE_WIDTH), dtype=np.int64)
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": image, "source": image,
            **{k: tfds.features.Text() for k in ("caption", "source_caption", "target_caption")},
            "source_objects": objects, "target_objects": objects,
            **{k: np.int64 for k in ("edit_type", "phrasing", "source_background", "target_background",
                                     "edit_index", "edit_cell")},
        }))

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {"train": self._generate_examples(2 * cfg.seed, cfg.num_train, held_out=False),
                "test": self._generate_examples(2 * cfg.seed + 1, cfg.num_test, held_out=True)}

    def _generate_examples(self, stream: int, n: int, held_out: bool):
        cfg = self.builder_config
        for i in range(n):
            yield i, edit_example(i, stream, cfg.image_size, cfg.max_objects, held_out)
