"""One interface over the two things images come from: a diffusers pipeline folder (any family of
``folders.FOLDER_SPECS``: SD3 / SD3.5, FLUX.1) and a training workdir.

    gen = open_source("/path/to/stable-diffusion-3.5-medium")     # or a workdir of `python -m mmdit_jax`
    images = gen.images(["a red circle"], seeds=[0])              # (N, H, W, 3) uint8, one image per (prompt, seed)

Each image is a function of its prompt and seed alone (not of its batch): a pipeline folder draws the image's
starting latents ``N(0, I)`` from ``PRNGKey(seed)`` (what ``Pipeline.generate(prompt, seed=seed)`` does for one
prompt);
a workdir samples each prompt from ``fold_in(PRNGKey(seed), 0)`` (what ``SamplingPipeline([prompt], seed)`` does).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.pipelines.images import to_uint8
from mmdit_jax.pipelines.pipeline import Pipeline

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Options:
    """Sampling settings; ``None`` takes the source's default (pipeline folder: 28 steps, guidance 7.0 for SD3 and
    3.5 for FLUX, the transformer's default size; workdir: its config's ``sample`` section and training size)."""

    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None


class ImageSource:
    """A ``Pipeline`` from a pipeline folder or a workdir, drawn one image per (prompt, seed).

    ``guidance_scale`` means what the model's spec says (``folders.FolderSpec`` / ``loaded.RunSpec``): SD3's and a
    workdir's CFG scale, with ``negative_prompt`` its negative branch; FLUX's embedded guidance (dev), where a
    negative prompt turns on true CFG at scale 4 (diffusers' default is none)."""

    def __init__(self, pipe: Pipeline, description: str, checkpoint_step: int | None = None):
        self.pipe = pipe
        self.description = description
        self.checkpoint_step = checkpoint_step   # a workdir's: the step of the checkpoint the weights come from

    def settings(self, options: Options) -> dict[str, Any]:
        """The values ``options`` resolve to (``steps``, ``guidance_scale``, ``height``, ``width``)."""
        pipe = self.pipe
        height, width = pipe.default_height_width()
        if options.steps is not None:
            steps: Any = options.steps
        elif pipe.is_run:
            steps = pipe.model.grid.sampler.get("n_steps", "sampler default")
        else:
            steps = 28
        guidance = pipe.default_guidance_scale if options.guidance_scale is None else options.guidance_scale
        return {"steps": steps, "guidance_scale": guidance, "height": options.height or height,
                "width": options.width or width}

    def images(self, prompts: Sequence[str], seeds: Sequence[int], options: Options) -> np.ndarray:
        """``(N, H, W, 3)`` uint8: image k of ``prompts[k]`` from ``seeds[k]``, whatever the batch."""
        pipe = self.pipe
        if pipe.text is None:
            raise ConfigError(f"{pipe.model.source}: the model is unconditional (no prompts); use "
                              "`python -m mmdit_jax --mode=sample` for its samples")
        s = self.settings(options)
        kwargs = {"height": s["height"], "width": s["width"], "guidance_scale": s["guidance_scale"],
                  "num_inference_steps": options.steps}
        if options.negative_prompt is not None:
            kwargs["negative_prompts"] = [options.negative_prompt]
            if pipe.model.spec.guidance == "embedded":
                kwargs["true_cfg_scale"] = 4.0
        if pipe.is_run:      # the run's sampler draws each image's noise from its seed
            return np.concatenate([to_uint8(pipe.generate([p], seed=int(seed), **kwargs))
                                   for p, seed in zip(prompts, seeds)])
        pipe.check_size(s["height"], s["width"])
        shape = pipe.latent_shape(1, s["height"], s["width"])
        latents = jnp.concatenate([jax.random.normal(jax.random.PRNGKey(int(seed)), shape) for seed in seeds])
        if options.negative_prompt is not None:
            kwargs["negative_prompts"] = [options.negative_prompt] * len(prompts)
        kwargs["num_inference_steps"] = s["steps"]
        return to_uint8(pipe.generate(list(prompts), latents=latents, **kwargs))


def with_lora(family: Any, variables: Any, path: str, weight: float = 1.0) -> dict[str, Any]:
    """``variables`` with a diffusers / PEFT LoRA file merged into the transformer: ``W + weight s A B``
    (``weight``: diffusers' ``lora_scale``). The family must have a diffusers counterpart (sd3, flux)."""
    from mmdit_jax.adapters.lora import merge
    from mmdit_jax.interop.lora import from_diffusers_lora, load_lora

    from safetensors import SafetensorError

    from mmdit_jax.reporting import one_line

    if not os.path.exists(path):
        raise ConfigError(f"--lora={path!r} does not exist (give a .safetensors file or a folder holding one)")
    try:
        state_dict, metadata = load_lora(path)
    except (SafetensorError, OSError) as e:   # truncated, corrupt, or not a safetensors file
        raise ConfigError(f"--lora={path!r}: not a readable .safetensors file (truncated or corrupt? "
                          f"{one_line(e)})") from e
    adapter, scale = from_diffusers_lora(family, family.config, state_dict, metadata)
    return {**variables, "params": merge(variables["params"], adapter, weight * scale)}


def add_lora(source: ImageSource, path: str, weight: float = 1.0) -> None:
    """Merge a LoRA file into an opened source's transformer (pipeline folder or workdir), in place."""
    source.pipe.variables = with_lora(source.pipe.family, source.pipe.variables, path, weight)
    source.description += f" + LoRA {path} (weight {weight})"


def is_pipeline_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


def open_source(path: str, dtype: str = "float32", config: Any = None) -> ImageSource:
    """A pipeline folder (has ``model_index.json``) or a training workdir with its validated ``config``
    (``mmdit_jax.config_schema.workdir_config``)."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}; valid: {list(DTYPES)}")
    if not os.path.isdir(path):
        raise ConfigError(f"source {path!r} is not a folder (give a diffusers pipeline folder or a training workdir)")
    if is_pipeline_folder(path):
        pipe = Pipeline.from_folder(path, dtype=dtype)
        return ImageSource(pipe, f"{pipe.model.pipeline} folder {path} ({dtype})")
    if config is not None:
        config = copy.deepcopy(config)
        if dtype != "float32":
            if "dtype" not in config.model:
                raise ConfigError(f"dtype={dtype!r}: model.name={config.model.name!r} has no compute dtype option")
            config.model.dtype = dtype
        from mmdit_jax.pipelines.loaded import LoadedModel
        from mmdit_jax.pipelines.trained_model import load_trained

        trained = load_trained(config, path)
        pipe = Pipeline(LoadedModel.from_trained(trained))
        return ImageSource(pipe, f"workdir {path} ({pipe.model.source}, {dtype})", trained.step)
    raise ConfigError(f"--source={path!r} is neither a diffusers pipeline folder (model_index.json) nor a training "
                      "workdir (config.json and checkpoints/)")


def seeds_for(num_prompts: int, per_prompt: int, seed: int) -> list[int]:
    """Image k of the run (prompt-major) gets seed ``seed + k``."""
    check_positive_int("num_images_per_prompt", per_prompt)
    return [seed + k for k in range(num_prompts * per_prompt)]
