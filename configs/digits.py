"""sklearn's 8x8 handwritten digits (upsampled to 32x32), captioned "a handwritten digit seven"."""

from configs.default import get_config as default_config
from mmdit_jax.data.registry import data_config


def get_config(arg: str = ""):
    c = default_config(arg)
    c.data = data_config("digits", image_size=c.data.image_size, batch_size=c.data.batch_size)
    c.sample.prompts = tuple(f"a handwritten digit {n}" for n in ("zero", "one", "two", "three", "seven", "nine"))
    return c
