"""TFDS builder of the ``moving_shapes`` clips (video, caption, per-frame centres, attribute and motion ids),
generated locally (``data/motion.py``). Train: stream 2 * seed; test: stream 2 * seed + 1. ``bounce``: clips
that may bounce off the walls after their first half (any length), captioned as bouncing."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mmdit_jax.data.motion import motion_example


@dataclasses.dataclass
class MovingShapesConfig(tfds.core.BuilderConfig):
    image_size: int = 32
    num_frames: int = 8
    num_train: int = 10_000
    num_test: int = 1_000
    seed: int = 0
    bounce: bool = False


def moving_shapes_config(image_size: int = 32, num_frames: int = 8, num_train: int = 10_000, num_test: int = 1_000,
                         seed: int = 0, bounce: bool = False) -> MovingShapesConfig:
    """A config whose name encodes every generation parameter (so different data never share a folder); clips
    without bounce keep the name they had before the option existed, so their prepared folders stay valid."""
    name = f"s{image_size}_t{num_frames}_n{num_train}_{num_test}_seed{seed}" + ("_bounce" if bounce else "")
    return MovingShapesConfig(name=name, version="1.0.0", image_size=image_size, num_frames=num_frames,
                              num_train=num_train, num_test=num_test, seed=seed, bounce=bool(bounce))


class MovingShapes(tfds.core.GeneratorBasedBuilder):
    """Procedural captioned clips of one moving shape; train and test streams use disjoint seeds."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [moving_shapes_config()]

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        s, t = cfg.image_size, cfg.num_frames
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(t, s, s, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            "centres": tfds.features.Tensor(shape=(t, 2), dtype=np.float32),
            **{k: np.int64 for k in ("shape", "colour", "size", "direction", "speed", "template")},
            "radius": np.float32,
        }))

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {"train": self._generate_examples(2 * cfg.seed, cfg.num_train),
                "test": self._generate_examples(2 * cfg.seed + 1, cfg.num_test)}

    def _generate_examples(self, stream: int, n: int):
        cfg = self.builder_config
        for i in range(n):
            yield i, motion_example(i, stream, cfg.image_size, cfg.num_frames, cfg.bounce)
