"""Draw samples from a trained model with any sampler of the core, classifier-free guidance and the study's edits.

    pipe = SamplingPipeline.from_workdir(config, workdir)
    images = pipe(prompts, seed, remove_pooled=False, steering=None)    (N, H, W, 3) uint8, chunked
    grid = pipe.grid(prompts, per_prompt, seed)                          the picture --mode=sample writes

Text-conditioned runs guide against the configured negative (``sample.negative``):
``out = out(neg) + s (out(cond) - out(neg))`` in one batched call per step. Unconditional runs draw from the
model alone. One compiled program per (batch shape, options): the whole sampling loop, with the model's
parameters prepared for compute once inside it.

Chunks: ``__call__`` processes prompts ``chunk`` at a time and chunk k draws its noise from
``fold_in(PRNGKey(seed), k)``, so two calls with the same number of prompts and the same seed start from the
same noise ("with vs without h_y", "original vs steered" compare the same trajectories' starting points).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.components.text import Steering
from mmdit_jax.diffusion.samplers import make_sampler
from mmdit_jax.pipelines.guidance import guided_net
from mmdit_jax.pipelines.images import to_uint8
from mmdit_jax.pipelines.trained_model import TrainedModel, load_trained

Array = jax.Array


class SamplingPipeline:
    """A trained model with its sampler, guidance scale and negative (defaults: the config's ``sample`` section)."""

    def __init__(self, model: TrainedModel, sampler: Any = None, guidance_scale: float | None = None,
                 negative: str | None = None, chunk: int = 128):
        cfg = model.config
        self.model = model
        self.sampler = make_sampler(sampler or cfg.sample.sampler, model.family.schedule, cfg.model_parameterization)
        self.guidance_scale = float(cfg.sample.guidance_scale if guidance_scale is None else guidance_scale)
        self.negative = negative or cfg.sample.negative
        self.chunk = chunk

    @classmethod
    def from_workdir(cls, config: Any, workdir: str, allow_untrained: bool = False,
                     **kwargs: Any) -> "SamplingPipeline":
        """The newest checkpoint's EMA weights of a training workdir (``load_trained``)."""
        return cls(load_trained(config, workdir, allow_untrained), **kwargs)

    @property
    def conditional(self) -> bool:
        return self.model.text is not None

    # ---- one compiled program per (shape, options) ----------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("self", "shape", "remove_pooled"))
    def draw(self, variables: Any, cond: Any, negative: Any, key: Array, shape: tuple[int, ...],
                remove_pooled: bool) -> Array:
        family = self.model.family
        options = {"remove_pooled": True} if remove_pooled else {}
        net = guided_net(family, family.prepare(variables), {} if cond is None else cond,
                         None if cond is None else negative, self.guidance_scale, options=options)
        return self.sampler(net, key, shape)

    def sample(self, cond: dict[str, Array] | None, key: Array, n: int | None = None, remove_pooled: bool = False,
               variables: Any = None, negative: dict[str, Array] | None = None) -> Array:
        """``(B, *data_shape)`` samples for a conditioning bundle (``B`` from it) or ``n`` unconditional ones.
        ``variables`` default to the model's (the training loop passes its current EMA weights); ``negative``
        to the configured negative of ``cond``."""
        variables = self.model.variables if variables is None else variables
        if cond is None:
            if n is None:
                raise ConfigError("an unconditional sample needs the number of samples n")
            return self.draw(variables, None, None, key, (n, *self.model.data_shape), remove_pooled)
        b = jax.tree_util.tree_leaves(cond)[0].shape[0]
        if negative is None:
            negative = self.model.text.negative(self.negative, cond)
        return self.draw(variables, cond, negative, key, (b, *self.model.data_shape), remove_pooled)

    # ---- prompts ----------------------------------------------------------------------------------------------

    def conditioning(self, prompts: Sequence[str], steering: Steering | None = None) -> dict[str, Any]:
        """The bundle for ``prompts``; ``steering = (positive prompts, negative prompts, w)``, one pair per prompt."""
        if self.model.text is None:
            raise ConfigError("this model is unconditional (its data set has no captions or its family reads no "
                              "text): sample it without prompts")
        cond = self.model.text.encode(prompts)
        if steering is not None:
            cond.update(self.model.text.steering(*steering))
        return cond

    def __call__(self, prompts: Sequence[str], seed: int, remove_pooled: bool = False,
                 steering: Steering | None = None) -> np.ndarray:
        """``(N, H, W, C)`` uint8 images for N prompts (decoded for a latent run), ``chunk`` at a time."""
        out = []
        many = len(prompts) > self.chunk
        for k, start in enumerate(range(0, len(prompts), self.chunk)):
            part = list(prompts[start:start + self.chunk])
            n = len(part)
            extra = self.chunk - n if many else 0       # pad the last chunk: one compiled shape
            steer = None
            if steering is not None:
                plus, minus, w = steering
                plus, minus = list(plus[start:start + n]), list(minus[start:start + n])
                steer = (plus + plus[-1:] * extra, minus + minus[-1:] * extra, w)
            cond = self.conditioning(part + part[-1:] * extra, steer)
            key = jax.random.fold_in(jax.random.PRNGKey(seed), k)
            out.append(np.asarray(self.model.to_images(self.sample(cond, key, remove_pooled=remove_pooled)))[:n])
        return to_uint8(np.concatenate(out))

    def grid(self, prompts: Sequence[str], per_prompt: int, seed: int, variables: Any = None) -> np.ndarray:
        """The sample picture of a run: a row per prompt and ``per_prompt`` seeds, with the configured pooled
        steering (``sample.steering``) and ``sample.remove_pooled``; one batch from ``PRNGKey(seed)``. An
        unconditional model draws ``per_prompt`` samples. Returns ``(H, W, 3)`` uint8."""
        cfg = self.model.config
        key = jax.random.PRNGKey(seed)
        remove_pooled = bool(cfg.sample.get("remove_pooled", False))
        if not self.conditional:
            x = self.sample(None, key, per_prompt, variables=variables)
            return self.model.data.render(np.asarray(self.model.to_images(x)), 1)
        full = [p for p in prompts for _ in range(per_prompt)]
        steer = cfg.sample.steering
        steering = None
        if steer.weight != 0.0:
            steering = ([steer.positive] * len(full), [steer.negative] * len(full), float(steer.weight))
        cond = self.conditioning(full, steering)
        x = self.sample(cond, key, remove_pooled=remove_pooled, variables=variables)
        return self.model.data.render(np.asarray(self.model.to_images(x)), len(prompts))
