"""Editing images with a trained model: instruction editing (in-context or channel-concatenating models, the run's
``edit`` section), SDEdit with any text-to-image model, and multi-turn editing.

    pipe = EditingPipeline(load_trained(config, workdir))
    edited = pipe.edit(images, instructions, seed)              (N, H, W, 3) uint8 in and out
    turns = pipe.multi_turn(image, [instr_1, ..., instr_k], seed)   (k, N, H, W, 3): turn j edits turn j - 1
    edited = pipe.sdedit(images, captions, strength, seed)      no edit training: noise to ``strength``, denoise

Guidance (``s_T = sample.guidance_scale``, ``∅_T`` the configured negative, ``src`` the source image):

* in-context: ``out = out(∅_T; src) + s_T (out(c_T; src) - out(∅_T; src))`` — the reference is in both branches,
  as in FLUX.1 Kontext;
* channel concatenation: two-scale guidance (``diffusion.guidance.two_scale_guidance``) with ``s_I =
  edit.image_guidance_scale`` and the null image ``0`` (what ``edit.image_drop_prob`` trained);
* SDEdit: ordinary CFG with the caption of the wanted image, from ``x_{t_s}`` on the ODE grid: the image-to-image
  task of ``pipeline.Pipeline`` on the run (``diffusion.sdedit.sdedit_ode``; the run's sampler must be ``ode`` or
  ``flow_euler``).

Each call is one compiled program per (shapes, options); every image in a batch gets its own noise from
``PRNGKey(seed)``, and turn ``j`` of ``multi_turn`` (from 0) uses seed ``seed + j``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.samplers import make_sampler
from mmdit_jax.pipelines.guidance import guided_net
from mmdit_jax.pipelines.images import preprocess_images, to_uint8
from mmdit_jax.pipelines.loaded import LoadedModel
from mmdit_jax.pipelines.pipeline import Pipeline
from mmdit_jax.setup.editing import edit_mode
from mmdit_jax.pipelines.trained_model import TrainedModel

Array = jax.Array


class EditingPipeline:
    """A trained model used as an editor; ``guidance_scale`` / ``image_guidance_scale`` default to the config's."""

    def __init__(self, model: TrainedModel, guidance_scale: float | None = None,
                 image_guidance_scale: float | None = None, negative: str | None = None):
        cfg = model.config
        if model.text is None:
            raise ConfigError("editing follows text (instructions or captions): this model is unconditional")
        if model.latent is not None:
            raise ConfigError("editing works on pixel-space runs; this run trains on VAE latents")
        self.model = model
        self.mode = edit_mode(cfg)
        self.sampler = make_sampler(cfg.sample.sampler, model.family.schedule, cfg.model_parameterization)
        self.guidance_scale = float(cfg.sample.guidance_scale if guidance_scale is None else guidance_scale)
        default_image = cfg.edit.image_guidance_scale if self.mode == "channel_concat" else 1.0
        self.image_guidance_scale = float(default_image if image_guidance_scale is None else image_guidance_scale)
        self.negative = negative or cfg.sample.negative

    def _check_shape(self, x: np.ndarray) -> None:
        if tuple(x.shape[1:]) != tuple(self.model.data_shape):
            raise ConfigError(f"images must be {tuple(self.model.data_shape)} for this model, got {tuple(x.shape[1:])}")

    def _texts(self, texts: Sequence[str], n: int) -> list[str]:
        texts = list(texts)
        if len(texts) == 1 and n > 1:
            texts = texts * n
        if len(texts) != n:
            raise ConfigError(f"give one text per image or one for all: got {len(texts)} texts for {n} images")
        return texts

    def _text(self, prompts: Sequence[str], n: int) -> tuple[dict[str, Array], dict[str, Array]]:
        cond = self.model.text.encode(self._texts(prompts, n))
        return cond, self.model.text.negative(self.negative, cond)

    # ---- instruction editing ----------------------------------------------------------------------------------

    @functools.partial(jax.jit, static_argnames=("self",))
    def _edit(self, variables: Any, source: Array, cond: Any, negative: Any, key: Array) -> Array:
        family = self.model.family
        variables = family.prepare(variables)
        if self.mode == "in_context":   # the reference is in both branches, as in FLUX.1 Kontext
            net = guided_net(family, variables, {**cond, "reference": source}, {**negative, "reference": source},
                             self.guidance_scale)
        else:
            net = guided_net(family, variables, {**cond, "concat": source}, {**negative, "concat": source},
                             self.guidance_scale, null_image={**negative, "concat": jnp.zeros_like(source)},
                             image_scale=self.image_guidance_scale)
        return self.sampler(net, key, source.shape)

    def edit(self, images: Any, instructions: Sequence[str], seed: int, variables: Any = None) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 edits of ``images`` (uint8), one instruction per image or one for all."""
        if self.mode is None:
            raise ConfigError("this run was not trained to follow instructions (no edit section); use sdedit "
                              "(edit command: --method=sdedit) with the caption of the wanted image")
        source = preprocess_images(images, "images")
        self._check_shape(source)
        cond, negative = self._text(instructions, len(source))
        variables = self.model.variables if variables is None else variables
        out = self._edit(variables, jnp.asarray(source), cond, negative, jax.random.PRNGKey(seed))
        return to_uint8(out)

    def grid(self, sources: Any, instructions: Sequence[str], per_source: int, seed: int,
             variables: Any = None) -> np.ndarray:
        """The sample picture of an editing run: a row per source image ``(K, H, W, 3)`` uint8, the source first,
        then ``per_source`` edits by its instruction (seeds ``seed .. seed + per_source - 1``)."""
        sources = np.asarray(sources)
        rows = [sources] + [self.edit(sources, instructions, seed + j, variables) for j in range(per_source)]
        images = np.stack(rows, axis=1).reshape(-1, *sources.shape[1:])
        return self.model.data.render(preprocess_images(images), len(sources))

    def multi_turn(self, images: Any, turns: Sequence[Sequence[str] | str], seed: int) -> np.ndarray:
        """``(k, N, H, W, 3)`` uint8: turn ``j`` applies ``turns[j]`` (one instruction, or one per image) to the
        result of turn ``j - 1`` (turn 0 edits ``images``), with seed ``seed + j``."""
        current, out = images, []
        for j, instructions in enumerate(turns):
            instructions = [instructions] if isinstance(instructions, str) else list(instructions)
            current = self.edit(current, instructions, seed + j)
            out.append(current)
        return np.stack(out)

    # ---- SDEdit -----------------------------------------------------------------------------------------------

    @functools.cached_property
    def _pipeline(self) -> Pipeline:
        """The one ``Pipeline`` on this run, guiding against this editor's negative (built on first use: only
        ``sdedit`` runs on it)."""
        loaded = LoadedModel.from_trained(self.model)
        loaded.spec = dataclasses.replace(loaded.spec, negative=self.negative)
        return Pipeline(loaded)

    def sdedit(self, images: Any, captions: Sequence[str], strength: float, seed: int) -> np.ndarray:
        """SDEdit (no edit training): ``images`` (uint8) noised to ``strength`` in (0, 1] and denoised towards
        ``captions`` (the wanted image's description), one per image or one for all; ``(N, H, W, 3)`` uint8. It is
        ``Pipeline``'s image-to-image on the run: its sampler must be ``ode`` or ``flow_euler``."""
        if self.mode == "channel_concat":
            raise ConfigError("sdedit needs a text-to-image model; this one reads a concatenated source image")
        source = preprocess_images(images, "images")
        self._check_shape(source)
        return self._pipeline(self._texts(captions, len(source)), image=images, strength=strength, seed=seed,
                              guidance_scale=self.guidance_scale)
