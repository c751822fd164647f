"""sklearn's 8x8 handwritten digits (upsampled to 32x32), captioned "a handwritten digit seven"."""

from configs.default import get_config as default_config


def get_config(arg: str = ""):
    c = default_config(arg)
    c.data.name = "digits"
    c.sample.prompts = tuple(f"a handwritten digit {n}" for n in ("zero", "one", "two", "three", "seven", "nine"))
    return c
