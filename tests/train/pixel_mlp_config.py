"""configs/default.py:tiny with the test's pixel-MLP family (tests/train/pixel_mlp.py) as the model."""

import tests.train.pixel_mlp  # noqa: F401  (registers model.name="pixel_mlp")
from configs.default import get_config as default_config
from mmdit_jax.families import family_config


def get_config(arg: str = "tiny"):
    c = default_config(arg)
    c.model = family_config("pixel_mlp", hidden=32)
    c.train.update(num_steps=4, checkpoint_every=2, log_every=2, sample_every=4)
    return c
