"""TFDS builder of sklearn's digits (1797 real 8x8 handwritten digits, shipped inside scikit-learn), with captions.

Images are grey levels 0..16 scaled to 0..255, nearest-upsampled to ``image_size`` and repeated to RGB.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
    image_size: int = 32
    num_test: int = 297


def digits_config(image_size: int = 32) -> DigitsConfig:
    return DigitsConfig(name=f"s{image_size}", version="1.0.0", image_size=image_size)


class Digits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [digits_config()]

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.builder_config.image_size
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8), "caption": tfds.features.Text(),
            "label": np.int64}))

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits

        d = load_digits()
        n_test = self.builder_config.num_test
        return {"train": self._generate_examples(d.images[:-n_test], d.target[:-n_test]),
                "test": self._generate_examples(d.images[-n_test:], d.target[-n_test:])}

    def _generate_examples(self, images, labels):
        s = self.builder_config.image_size
        for i, (img, label) in enumerate(zip(images, labels)):
            idx = (np.arange(s) * 8) // s
            up = (img[idx][:, idx] * (255.0 / 16.0)).round().astype(np.uint8)
            yield i, {"image": np.repeat(up[..., None], 3, axis=-1),
                      "caption": f"a handwritten digit {NAMES[label]}", "label": int(label)}
