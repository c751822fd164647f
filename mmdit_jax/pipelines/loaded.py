"""A loaded model: everything sampling needs and nothing training needs.

    LoadedModel(family, variables, text, codec, grid, spec)

``family.net(variables, cond)`` is the ``net(x, t)`` of the score-based core; ``text`` turns prompts into the
conditioning bundle (``mmdit_jax.components.text``); ``codec`` maps images to the model's latents and back
(``mmdit_jax.components.codec``; None: the model works on pixels); ``grid`` says how the sampling grid is built
(a pipeline folder's FlowMatchEuler scheduler). Pipeline folders produce one with
``mmdit_jax.pipelines.folders.load_folder``; ``mmdit_jax.pipelines.pipeline.Pipeline`` runs every task on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from mmdit_jax.components.codec import KLCodec
from mmdit_jax.families import Family

VAECodec = KLCodec


@dataclasses.dataclass(frozen=True)
class FolderGrid:
    """A pipeline folder's FlowMatchEuler grid: its scheduler config, whether the grid is FLUX's custom one, and the
    latent pixels per token side (for ``mu``'s token count)."""

    scheduler: dict[str, Any]
    custom_sigmas: bool
    latent_patch: int

    def sigmas(self, num_inference_steps: int, latent_height: int, latent_width: int,
               sigmas: Any = None) -> tuple[np.ndarray, float | None]:
        """``(sigmas (n + 1,) float32, mu)`` as the diffusers pipeline sets them for this latent size."""
        from mmdit_jax.pipelines.folders import folder_grid

        p = self.latent_patch
        return folder_grid(self.scheduler, self.custom_sigmas, num_inference_steps,
                           (latent_height // p) * (latent_width // p), sigmas)


@dataclasses.dataclass
class LoadedModel:
    """A sampler-ready model (module docstring). ``variables`` may be replaced (e.g. a LoRA merged in)."""

    family: Family
    variables: Any
    text: Any
    codec: KLCodec | None
    grid: FolderGrid
    spec: Any = None              # the folder spec (mmdit_jax.pipelines.folders.FolderSpec)
    pipeline: str = ""            # model_index.json's _class_name
    source: str = ""

    def __post_init__(self) -> None:
        self.variables = jax.device_put(self.variables)
