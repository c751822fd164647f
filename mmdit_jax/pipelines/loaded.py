"""A loaded model: everything sampling needs and nothing training needs.

    LoadedModel(family, variables, text, codec, grid, spec)

``family.net(variables, cond)`` is the ``net(x, t)`` of the score-based core; ``text`` turns prompts into the
conditioning bundle (``mmdit_jax.components.text``); ``codec`` maps images to the model's examples and back
(``mmdit_jax.components.codec``; ``PixelCodec`` for a model on pixels); ``grid`` says how the sampling grid is
built and ``spec`` what guidance means and which sizes the model takes:

* a pipeline folder (``folders.load_folder``): ``FolderGrid`` (diffusers' FlowMatchEuler grid) and the family's
  ``FolderSpec``;
* a training workdir (``from_trained``): ``RunGrid`` (the run's own sampler; SDEdit and inpainting on its
  probability-flow ODE) and ``RunSpec`` (CFG against the run's configured negative, the training size).

``mmdit_jax.pipelines.pipeline.Pipeline`` runs every task on either.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from mmdit_jax.components.codec import KLCodec
from mmdit_jax.families import Family


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
class PixelCodec:
    """The identity codec of a model that works on pixels in [-1, 1] (``encode`` / ``decode`` as ``KLCodec``'s)."""

    channels: int
    variables: Any = dataclasses.field(default_factory=dict)
    downscale: int = 1

    @property
    def latent_channels(self) -> int:
        return self.channels

    def encode(self, variables: Any, images: Any, eps: Any = None) -> Any:
        return images

    def decode(self, variables: Any, z: Any, shift: bool = True) -> Any:
        return z


@dataclasses.dataclass(frozen=True)
class RunGrid:
    """A training run's sampling: its ``sample.sampler`` section, on the family's schedule in the run's
    parameterisation. Image-to-image and inpainting integrate the probability-flow ODE on the same grid
    (``mmdit_jax.diffusion.sdedit.ode_method``)."""

    sampler: Any
    parameterization: str
    latent_patch: int = 1


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a workdir's guidance and sizes mean: CFG at ``sample.guidance_scale`` against ``sample.negative``
    (``null``: zeros; ``empty_prompt``: the encoded ``""``) unless negative prompts are given; the training size."""

    default_guidance_scale: float
    negative: str
    size: tuple[int, int]          # (height, width) pixels
    guidance: str = "cfg"
    model_time: Any = None
    reference_pipelines: tuple[str, ...] = ()


@dataclasses.dataclass
class LoadedModel:
    """A sampler-ready model (module docstring). ``variables`` may be replaced (e.g. a LoRA merged in)."""

    family: Family
    variables: Any
    text: Any
    codec: Any                    # KLCodec | PixelCodec
    grid: Any                     # FolderGrid | RunGrid
    spec: Any = None              # the folder spec (mmdit_jax.pipelines.folders.FolderSpec)
    pipeline: str = ""            # model_index.json's _class_name
    source: str = ""

    def __post_init__(self) -> None:
        self.variables = jax.device_put(self.variables)

    @classmethod
    def from_trained(cls, trained: Any) -> "LoadedModel":
        """The ``LoadedModel`` of a workdir's ``TrainedModel`` (``trained_model.load_trained``)."""
        from mmdit_jax.checks import ConfigError

        cfg = trained.config
        shape = tuple(trained.data_shape)
        if len(shape) != 3:
            raise ConfigError(f"the image pipeline takes runs on images (H, W, C); this run's examples are {shape} "
                              "(clips: mmdit_jax.pipelines.video)")
        codec = (PixelCodec(shape[-1]) if trained.latent is None
                 else KLCodec(trained.latent.config, trained.latent.variables))
        f = codec.downscale
        spec = RunSpec(float(cfg.sample.guidance_scale), str(cfg.sample.negative), (shape[0] * f, shape[1] * f))
        grid = RunGrid(dict(cfg.sample.sampler), str(cfg.model_parameterization))
        return cls(family=trained.family, variables=trained.variables, text=trained.text, codec=codec, grid=grid,
                   spec=spec, pipeline="workdir", source=f"step {trained.step}")
