"""The ``edit`` config section: how an instruction-editing model reads the image it edits.

    edit.mode = "in_context"       the clean source image's tokens join the image stream with their own positions
                                   (FLUX.1 Kontext style; ``cond["reference"]``); the loss is on the target tokens
                                   only, because the network's output is the target's. Same weights as text-to-image.
    edit.mode = "channel_concat"   the source image is concatenated to the noisy input's channels (InstructPix2Pix;
                                   ``cond["concat"]``); ``model.in_channels`` doubles, and a fine-tune from a
                                   text-to-image run starts with the new input rows at zero (``adapters.widen``)
    edit.image_drop_prob = p       channel_concat only: per example, the source image is zeroed with probability p
                                   and the source and the text together with probability p (InstructPix2Pix's
                                   condition dropout; text alone is dropped by ``text.drop_probs``), so the model
                                   learns ``out(c_I, ∅)`` and ``out(∅, ∅)`` for two-scale guidance
    edit.image_guidance_scale      channel_concat: ``s_I`` of two-scale guidance (``diffusion.guidance``); text
                                   guidance is ``sample.guidance_scale``

The data set gives each example its source image as the condition ``"source"`` (``DatasetSpec.conditions``, e.g.
``shape_edits``); the mode decides which conditioning entry it becomes. Editing runs are in pixel space.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import ml_collections

from mmdit_jax.checks import ConfigError, check_choice, check_keys

Array = jax.Array
MODES = {"in_context": "reference", "channel_concat": "concat"}   # mode -> the conditioning entry of the source
SOURCE = "source"


def edit_config(mode: str = "in_context", image_drop_prob: float = 0.0,
                image_guidance_scale: float = 1.5) -> ml_collections.ConfigDict:
    """The ``edit`` section."""
    return ml_collections.ConfigDict(dict(mode=mode, image_drop_prob=float(image_drop_prob),
                                          image_guidance_scale=float(image_guidance_scale)))


def edit_mode(config: Any) -> str | None:
    """The run's ``edit.mode``, or None for a run that does not edit."""
    return config.edit.mode if "edit" in config else None


def check_edit_section(ed: Any) -> None:
    """Raise ConfigError naming the first invalid field of the ``edit`` section ``ed``."""
    check_keys("edit", ed.keys(), {"mode", "image_drop_prob", "image_guidance_scale"})
    check_choice("edit.mode", ed.mode, MODES)
    p = ed.image_drop_prob
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 0.5:
        raise ConfigError(f"edit.image_drop_prob={p!r} is not valid; choose a number in [0, 0.5)")
    if p and ed.mode != "channel_concat":
        raise ConfigError("edit.image_drop_prob is for edit.mode='channel_concat' (an in-context model always sees "
                          "its source); set it to 0")
    g = ed.image_guidance_scale
    if not isinstance(g, (int, float)) or isinstance(g, bool) or not math.isfinite(g):
        raise ConfigError(f"edit.image_guidance_scale={g!r} is not valid; choose a finite number")


def check_edit_run(mode: str, data_name: str, data_conditions: bool, latent: bool, text: bool,
                   lora_rank: int) -> None:
    """Raise ConfigError when the rest of the run cannot train an editor of ``edit.mode=mode``."""
    if not data_conditions:
        raise ConfigError(f"edit.mode={mode!r} needs a data set of edits whose examples carry a source image "
                          f"(e.g. data.name='shape_edits'); data.name={data_name!r} has none")
    if latent:
        raise ConfigError("editing runs are in pixel space: remove the latent section (latent.vae) or the edit section")
    if not text:
        raise ConfigError("an editing run follows instructions: it needs a text section")
    if mode == "channel_concat" and lora_rank:
        raise ConfigError("edit.mode='channel_concat' trains the widened input projection, which LoRA keeps frozen "
                          "at zero: set finetune.lora.rank=0 (full fine-tuning) or use edit.mode='in_context'")


def image_dropout(prob: float) -> Callable[[Array, dict[str, Array]], dict[str, Array]]:
    """``drop(key, cond) -> cond``: per example, zero ``concat`` with probability ``prob`` and ``concat``,
    ``context`` and ``pooled`` together with probability ``prob`` (disjoint events)."""

    def drop(key: Array, cond: dict[str, Array]) -> dict[str, Array]:
        u = jax.random.uniform(key, (cond["concat"].shape[0],))
        keep_image = u >= 2 * prob
        keep_text = (u < prob) | (u >= 2 * prob)

        def mask(v: Array, keep: Array) -> Array:
            return v * keep.reshape(-1, *([1] * (v.ndim - 1))).astype(v.dtype)

        out = {**cond, "concat": mask(cond["concat"], keep_image)}
        for name in ("context", "pooled"):
            if name in cond:
                out[name] = mask(cond[name], keep_text)
        return out

    return drop
