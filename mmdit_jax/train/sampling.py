"""Sample grids from prompts with any sampler, classifier-free guidance against the encoded empty prompt."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.diffusion.guidance import classifier_free_guidance
from mmdit_jax.diffusion.samplers import make_sampler
from mmdit_jax.diffusion.schedules import Schedule
from mmdit_jax.models.mmdit import MMDiT
from mmdit_jax.models.mmdit_params import cast_kernels


def make_grid_sampler(model: MMDiT, schedule: Schedule, config: Any, image_shape: tuple[int, int, int],
                      remove_pooled: bool | None = None):
    """``sample(variables, c, y, c_neg, y_neg, key, steering=None) -> images (B, H, W, C)`` in [-1, 1], one program.

    ``steering = (y_plus, y_minus, w)`` steers the pooled embedding at every model call (both CFG branches):
    ŷ = y + w (h_y(y_plus) - h_y(y_minus)); see ``MMDiT``. ``remove_pooled`` (default ``sample.remove_pooled``)
    samples with y = e_t. Any sampler of ``make_sampler`` works: the edit lives in the network function.
    """
    sampler = make_sampler(config.sample.sampler, schedule, config.model_parameterization)
    scale = float(config.sample.guidance_scale)
    use_pooled = model.config.use_pooled
    if remove_pooled is None:
        remove_pooled = bool(config.sample.get("remove_pooled", False))

    def model_fn(variables, x, t, cond, steering):
        c, y = cond
        return model.apply(variables, x, config.timestep_scale * t, c, y if use_pooled else None,
                           remove_pooled=remove_pooled, pooled_steering=steering)

    @jax.jit
    def sample(variables, c, y, c_neg, y_neg, key, steering=None):
        # kernels in the compute dtype once, not in every sampler step (a scanned model slices them per block)
        variables = {**variables, "params": cast_kernels(variables["params"], model.config.dtype)}
        if steering is not None:  # the CFG batch is [uncond; cond]: steer both halves alike
            steering = tuple(jnp.concatenate([v, v]) if jnp.ndim(v) else v for v in steering)
        guided = classifier_free_guidance(lambda v, x, t, cond: model_fn(v, x, t, cond, steering), scale)
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
