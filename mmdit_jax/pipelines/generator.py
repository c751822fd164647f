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
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.pipelines.images import to_uint8
from mmdit_jax.pipelines.pipeline import Pipeline
from mmdit_jax.pipelines.sampling import SamplingPipeline

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


class ImageSource(Protocol):
    description: str

    def images(self, prompts: Sequence[str], seeds: Sequence[int], options: Options) -> np.ndarray: ...

    def settings(self, options: Options) -> dict[str, Any]:
        """The values ``options`` resolve to (``steps``, ``guidance_scale``, ``height``, ``width``)."""
        ...


class FolderSource:
    """A diffusers pipeline folder of any registered family, run by ``Pipeline``.

    ``guidance_scale`` means what the folder's family says (``folders.FolderSpec``): SD3's CFG scale, with
    ``negative_prompt`` its negative branch; FLUX's embedded guidance (dev), where a negative prompt turns on true
    CFG at scale 4 (diffusers' default is none)."""

    def __init__(self, path: str, dtype: str):
        self.pipe = Pipeline.from_folder(path, dtype=dtype)
        self.default_guidance = self.pipe.default_guidance_scale
        self.description = f"{self.pipe.model.pipeline} folder {path} ({dtype})"

    def settings(self, options: Options) -> dict[str, Any]:
        return {"steps": 28 if options.steps is None else options.steps,
                "guidance_scale": self.default_guidance if options.guidance_scale is None else options.guidance_scale,
                "height": options.height or self.pipe.default_size, "width": options.width or self.pipe.default_size}

    def images(self, prompts: Sequence[str], seeds: Sequence[int], options: Options) -> np.ndarray:
        pipe = self.pipe
        s = self.settings(options)
        height, width = s["height"], s["width"]
        pipe.check_size(height, width)
        shape = pipe.latent_shape(1, height, width)
        latents = jnp.concatenate([jax.random.normal(jax.random.PRNGKey(int(s)), shape) for s in seeds])
        negative = {}
        if options.negative_prompt is not None:
            negative = {"negative_prompts": [options.negative_prompt] * len(prompts)}
            if pipe.model.spec.guidance == "embedded":
                negative["true_cfg_scale"] = 4.0
        return to_uint8(pipe.generate(list(prompts), height=height, width=width, num_inference_steps=s["steps"],
                                      guidance_scale=s["guidance_scale"], latents=latents, **negative))


class WorkdirSource:
    """The newest checkpoint's EMA weights of a training workdir, run by ``SamplingPipeline``."""

    def __init__(self, workdir: str, dtype: str, config: Any):
        config = copy.deepcopy(config)
        if dtype != "float32":
            if "dtype" not in config.model:
                raise ConfigError(f"dtype={dtype!r}: model.name={config.model.name!r} has no compute dtype option")
            config.model.dtype = dtype
        self.config = config
        self.workdir = workdir
        self.dtype = dtype
        self._pipes: dict[tuple, SamplingPipeline] = {}
        self._base = self._pipe(None, None)
        self.description = f"workdir {workdir} (step {self._base.model.step}, {dtype})"

    def _pipe(self, steps: int | None, guidance: float | None) -> SamplingPipeline:
        key = (steps, guidance)
        if key not in self._pipes:
            sampler = None
            if steps is not None:
                sampler = copy.deepcopy(self.config.sample.sampler)
                if "n_steps" not in sampler:
                    raise ConfigError(f"steps: sampler {sampler.name!r} of this run has no n_steps option")
                sampler.n_steps = steps
            base = self._pipes.get((None, None))
            model = base.model if base is not None else None
            self._pipes[key] = (SamplingPipeline(model, sampler=sampler, guidance_scale=guidance) if model
                                else SamplingPipeline.from_workdir(self.config, self.workdir, sampler=sampler,
                                                                   guidance_scale=guidance))
        return self._pipes[key]

    @property
    def model(self) -> Any:
        """The workdir's ``TrainedModel`` (shared by the pipelines of every steps / guidance setting)."""
        return self._base.model

    def settings(self, options: Options) -> dict[str, Any]:
        pipe = self._pipe(options.steps, options.guidance_scale)
        model = pipe.model
        f = 1 if model.latent is None else model.latent.config.downscale
        sampler = self.config.sample.sampler if options.steps is None else {"n_steps": options.steps}
        return {"steps": sampler.get("n_steps", "sampler default"), "guidance_scale": pipe.guidance_scale,
                "height": model.data_shape[0] * f, "width": model.data_shape[1] * f}

    def images(self, prompts: Sequence[str], seeds: Sequence[int], options: Options) -> np.ndarray:
        pipe = self._pipe(options.steps, options.guidance_scale)
        model = pipe.model
        if not pipe.conditional:
            raise ConfigError(f"{self.workdir}: the model is unconditional (no prompts); use "
                              "`python -m mmdit_jax --mode=sample` for its samples")
        trained = self.settings(options)["height"], self.settings(options)["width"]
        for name, value, size in (("height", options.height, trained[0]), ("width", options.width, trained[1])):
            if value is not None and value != size:
                raise ConfigError(f"{name}={value}: a workdir's model samples at its training size "
                                  f"{trained[0]}x{trained[1]}")
        negative = None if options.negative_prompt is None else model.text.encode([options.negative_prompt])
        out = []
        for prompt, seed in zip(prompts, seeds):
            x = pipe.sample(pipe.conditioning([prompt]), jax.random.fold_in(jax.random.PRNGKey(int(seed)), 0),
                            negative=negative)
            out.append(to_uint8(model.to_images(x)))
        return np.concatenate(out)


def with_lora(family: Any, variables: Any, path: str, weight: float = 1.0) -> dict[str, Any]:
    """``variables`` with a diffusers / PEFT LoRA file merged into the transformer: ``W + weight s A B``
    (``weight``: diffusers' ``lora_scale``). The family must have a diffusers counterpart (sd3, flux)."""
    from mmdit_jax.adapters.lora import merge
    from mmdit_jax.interop.lora import from_diffusers_lora, load_lora

    if not os.path.exists(path):
        raise ConfigError(f"lora={path!r} does not exist (give a .safetensors file or a folder holding one)")
    state_dict, metadata = load_lora(path)
    adapter, scale = from_diffusers_lora(family.name, family.config, state_dict, metadata)
    return {**variables, "params": merge(variables["params"], adapter, weight * scale)}


def add_lora(source: "ImageSource", path: str, weight: float = 1.0) -> None:
    """Merge a LoRA file into an opened source's transformer (pipeline folder or workdir), in place."""
    if isinstance(source, FolderSource):
        source.pipe.variables = with_lora(source.pipe.family, source.pipe.variables, path, weight)
    else:
        source.model.variables = with_lora(source.model.family, source.model.variables, path, weight)
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
        return FolderSource(path, dtype)
    if config is not None:
        return WorkdirSource(path, dtype, config)
    raise ConfigError(f"source {path!r} is neither a diffusers pipeline folder (model_index.json) nor a training workdir "
                      "(config.json and checkpoints/)")


def seeds_for(num_prompts: int, per_prompt: int, seed: int) -> list[int]:
    """Image k of the run (prompt-major) gets seed ``seed + k``."""
    check_positive_int("num_images_per_prompt", per_prompt)
    return [seed + k for k in range(num_prompts * per_prompt)]
