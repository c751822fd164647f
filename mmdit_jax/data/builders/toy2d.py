"""TFDS builder of the 2D toy distributions (the NCSN mixture), as float32 points."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import tensorflow_datasets as tfds

from mmdit_jax.data.toy2d import NCSN_MIXTURE


@dataclasses.dataclass
class Toy2DConfig(tfds.core.BuilderConfig):
    num_train: int = 50_000
    num_test: int = 5_000
    seed: int = 0


class Toy2D(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [Toy2DConfig(name="ncsn_mixture", version="1.0.0")]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "x": tfds.features.Tensor(shape=(2,), dtype=np.float32), "component": np.int64}))

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {"train": self._generate_examples(2 * cfg.seed, cfg.num_train),
                "test": self._generate_examples(2 * cfg.seed + 1, cfg.num_test)}

    def _generate_examples(self, stream: int, n: int):
        x = np.asarray(NCSN_MIXTURE.sample(jax.random.PRNGKey(stream), n))
        comp = np.asarray(NCSN_MIXTURE.component(x))
        for i in range(n):
            yield i, {"x": x[i], "component": int(comp[i])}
