"""The parts of a run built from its config, identically for training and inference: the model family, the
text conditioner (if the data is captioned and the family reads text), and the fresh model variables.

Keys: ``PRNGKey(config.seed)`` splits into the model's init key and the text encoders' key (random encoder
presets), so a pipeline rebuilds exactly the encoders and non-trained buffers the run trained with.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mmdit_jax.checks import ConfigError, check_choice
from mmdit_jax.data.registry import DatasetSpec, dataset_spec
from mmdit_jax.diffusion.losses import LOSSES
from mmdit_jax.diffusion.schedules import get_schedule
from mmdit_jax.families import Family, build_family
from mmdit_jax.components.codec import LatentSpace
from mmdit_jax.components.text import TextConditioner, text_stack_from_config

Array = jax.Array
TEXT_ENTRIES = ("context", "pooled")


def run_keys(seed: int) -> tuple[Array, Array]:
    """``(model init key, text encoder key)`` of a run."""
    key_model, key_text = jax.random.split(jax.random.PRNGKey(seed))
    return key_model, key_text


def family_from_config(config: Any) -> Family:
    """The run's model family: ``config.model`` with the run's schedule, time scale and loss."""
    check_choice("loss.name", config.loss.name, LOSSES)
    forward_mode = LOSSES[config.loss.name].forward_mode
    try:
        return build_family(config.model, get_schedule(config.schedule), config.timestep_scale, forward_mode)
    except ConfigError as e:
        if forward_mode:   # say which setting made the model's options invalid
            raise ConfigError(f"loss.name={config.loss.name!r}: {e}") from e
        raise


def data_shape(config: Any) -> tuple[int, ...]:
    """Shape of one example the model sees (no batch axis): the data set's, or its VAE latent's for a latent run
    (``latent.vae``; the VAE is loaded, nothing else is built)."""
    shape = tuple(dataset_spec(config.data.name).example_shape(config.data))
    space = LatentSpace.from_config(config)
    return shape if space is None else space.example_shape(shape)


def uses_text(family: Family, spec: DatasetSpec) -> bool:
    """Whether the run conditions on text: the family reads a text entry and the data has captions."""
    reads_text = any(name in TEXT_ENTRIES for name in family.conditioning)
    if reads_text and not spec.captioned:
        raise ConfigError(f"model.name={family.name!r} is conditioned on text ({list(family.conditioning)}), but the "
                          "data set has no captions; choose a captioned data set or an unconditional family")
    return reads_text


def text_from_config(config: Any, family: Family) -> TextConditioner | None:
    """The run's text conditioner, or None for an unconditional run."""
    if not uses_text(family, dataset_spec(config.data.name)):
        return None
    return text_stack_from_config(family.text_stack, config.text, run_keys(config.seed)[1])


def example_inputs(shape: tuple[int, ...], cond_shapes: dict[str, tuple[int, ...]]) -> tuple[Array, dict[str, Array]]:
    """A batch of one zero example and zero conditioning: what ``Family.init`` needs (shapes only)."""
    return jnp.zeros((1, *shape)), {k: jnp.zeros((1, *s[1:])) for k, s in cond_shapes.items()}


def checkpoint_params(family: Family) -> Callable[[str], Any]:
    """``folder -> params``: a released checkpoint (e.g. a diffusers pipeline folder) read by the family's
    converter, in the run's block layout (a family without one raises ConfigError naming it)."""

    def load(folder: str) -> Any:
        overrides = {"scan_blocks": family.config.scan_blocks} if hasattr(family.config, "scan_blocks") else {}
        return family.load_pretrained(folder, **overrides)[1]["params"]

    return load
