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


def toy2d_config(num_train: int = 50_000, num_test: int = 5_000, seed: int = 0) -> Toy2DConfig:
    """A config whose name encodes every generation parameter (so different data never share a folder)."""
    name = "ncsn_mixture" if (num_train, num_test, seed) == (50_000, 5_000, 0) else \
        f"ncsn_mixture_n{num_train}_{num_test}_seed{seed}"
    return Toy2DConfig(name=name, version="1.0.0", num_train=num_train, num_test=num_test, seed=seed)


class Toy2D(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [toy2d_config()]

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
