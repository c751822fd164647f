"""Sample grids from prompts with any sampler, classifier-free guidance against the encoded empty prompt."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from mmdit_jax.diffusion.guidance import classifier_free_guidance
from mmdit_jax.diffusion.samplers import make_sampler
from mmdit_jax.diffusion.schedules import Schedule
from mmdit_jax.models.mmdit import MMDiT


def make_grid_sampler(model: MMDiT, schedule: Schedule, config: Any, image_shape: tuple[int, int, int]):
    """``sample(variables, c, y, c_neg, y_neg, key) -> images (B, H, W, C)`` in [-1, 1], compiled once."""
    sampler = make_sampler(config.sample.sampler, schedule, config.model_parameterization)
    scale = float(config.sample.guidance_scale)
    use_pooled = model.config.use_pooled

    def model_fn(variables, x, t, cond):
        c, y = cond
        return model.apply(variables, x, config.timestep_scale * t, c, y if use_pooled else None)

    guided = classifier_free_guidance(model_fn, scale)

    @jax.jit
    def sample(variables, c, y, c_neg, y_neg, key):
        net = lambda x, t: guided(variables, x, t, ((c, y), (c_neg, y_neg)))  # noqa: E731
        return sampler(net, key, (c.shape[0],) + image_shape)

    return sample


def to_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """``(N, H, W, 3)`` in [-1, 1] -> one uint8 image of ``rows`` rows with a 1-pixel grey border."""
    imgs = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    n, h, w, c = imgs.shape
    cols = int(np.ceil(n / rows))
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 64, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = imgs[i]
    return grid


def prompts_grid(prompts: Sequence[str], per_prompt: int) -> list[str]:
    """Each prompt repeated ``per_prompt`` times (one column per seed)."""
    return [p for p in prompts for _ in range(per_prompt)]
