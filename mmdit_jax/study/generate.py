"""Generate ``shapes`` images from a trained study MMDiT: prompts in, uint8 images out, with the study's edits.

    images = generator(prompts, seed, remove_pooled=False, steering=None)     (N, H, W, 3) uint8

Prompts are processed in fixed chunks, and chunk k draws its noise from fold_in(PRNGKey(seed), k): two calls
with the same number of prompts and the same seed start from the same noise, so "with vs without h_y" and
"original vs steered" compare the same trajectories' starting points.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.train.experiment import build
from mmdit_jax.train.sampling import make_grid_sampler


class Generator:
    """A trained MMDiT (EMA weights) with its frozen text encoders and the configured sampler and CFG."""

    def __init__(self, config: Any, workdir: str, chunk: int = 128, allow_untrained: bool = False):
        self.exp, self.step, _ = build(config, workdir)
        self.exp.checkpointer.close()
        if self.step == 0 and not allow_untrained:
            raise RuntimeError(f"no trained checkpoint in {workdir} (allow_untrained=True samples the initialisation)")
        self.variables = {"params": self.exp.state.ema_params, **self.exp.buffers}
        self.chunk = chunk
        self._samplers = {}

    def _sampler(self, remove_pooled: bool):
        if remove_pooled not in self._samplers:
            e = self.exp
            self._samplers[remove_pooled] = make_grid_sampler(e.model, e.schedule, e.config, e.image_shape,
                                                              remove_pooled=remove_pooled)
        return self._samplers[remove_pooled]

    def encode(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
        return self.exp.encoders.encode(list(prompts))

    def __call__(self, prompts: Sequence[str], seed: int, remove_pooled: bool = False,
                 steering: tuple[Sequence[str], Sequence[str], float] | None = None) -> np.ndarray:
        """``steering = (positive prompts, negative prompts, w)``, one of each per prompt."""
        sample = self._sampler(remove_pooled)
        out = []
        for k, start in enumerate(range(0, len(prompts), self.chunk)):
            part = list(prompts[start:start + self.chunk])
            n = len(part)
            pad = part + [part[-1]] * (self.chunk - n) if len(prompts) > self.chunk else part
            c, y = self.encode(pad)
            steer = None
            if steering is not None:
                plus, minus, w = steering
                sl = slice(start, start + n)
                extra = self.chunk - n if len(prompts) > self.chunk else 0
                _, y_plus = self.encode(list(plus[sl]) + [plus[sl][-1]] * extra)
                _, y_minus = self.encode(list(minus[sl]) + [minus[sl][-1]] * extra)
                steer = (y_plus, y_minus, jnp.float32(w))
            key = jax.random.fold_in(jax.random.PRNGKey(seed), k)
            if self.exp.config.sample.negative == "null":   # what the model saw when its encoders were dropped
                c_neg, y_neg = jnp.zeros_like(c), jnp.zeros_like(y)
            else:
                c_neg, y_neg = self.encode([""] * len(pad))
            images = sample(self.variables, c, y, c_neg, y_neg, key, steer)
            out.append(np.asarray(images)[:n])
        x = np.concatenate(out)
        return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
