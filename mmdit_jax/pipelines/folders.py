"""Diffusers pipeline folders -> ``LoadedModel``: per-family folder specs, read through ``model_index.json``.

A folder saved by ``save_pretrained`` holds ``model_index.json`` and one sub-folder per component. Its
``_class_name`` names the pipeline and so the family; the family's ``FolderSpec`` says which text stack it reads
(``mmdit_jax.components.text.TEXT_STACKS``), what its ``guidance_scale`` means and how its sampling grid is built:

=========================  ======  ==========  ===================================  ==============================
transformer                family  text stack  guidance_scale                       grid (FlowMatchEuler)
=========================  ======  ==========  ===================================  ==============================
``SD3Transformer2DModel``  sd3     sd3         CFG scale (7.0), negative ``""``     scheduler's (``mu`` if dynamic)
``FluxTransformer2DModel`` flux    flux        embedded guidance (3.5; dev only);   ``linspace(1, 1/n, n)``, ``mu``
                                               ``true_cfg_scale`` > 1 is CFG        of the token count
=========================  ======  ==========  ===================================  ==============================

``model_index.json``'s ``_class_name`` picks the spec (every pipeline class of a family shares its components); a
``FluxKontextPipeline`` folder also takes a reference image. ``register_folder_spec`` adds a family's spec from
outside the package.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import numpy as np

from mmdit_jax.checks import ConfigError
from mmdit_jax.components.codec import KLCodec
from mmdit_jax.components.text import TEXT_STACKS, text_stack_from_folder
from mmdit_jax.diffusion.flow_match import dynamic_mu, flow_match_schedule, flux_sigmas, scheduler_config
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule
from mmdit_jax.families import get_family


@dataclasses.dataclass(frozen=True)
class FolderSpec:
    """How one family's released pipeline folders are read and sampled.

    ``guidance``: ``"cfg"`` (``guidance_scale`` is the CFG scale, negative prompt ``""`` by default) or
    ``"embedded"`` (``guidance_scale`` is written into ``cond["guidance"]`` for a guidance-distilled model; CFG is
    ``true_cfg_scale`` with explicit negative prompts). ``custom_sigmas``: the grid is ``linspace(1, 1/n, n)``
    shifted by ``mu`` of the token count (FLUX); otherwise the scheduler's own grid, with ``mu`` only under
    ``use_dynamic_shifting`` (SD3). ``model_time``: the pipeline's ``t`` -> what ``family.net`` is called with.
    ``latent_patch``: latent pixels per token side; ``latent_channels`` and ``default_latent_size`` read the
    transformer config. ``image_task_steps``: the default steps of image-to-image and inpainting.
    ``pipelines`` / ``reference_pipelines``: the ``_class_name`` values read with this spec / that take a reference
    image.
    """

    family: str
    text_stack: str
    guidance: str
    default_guidance_scale: float
    custom_sigmas: bool
    timestep_scale: Callable[[dict[str, Any]], float]
    model_time: Callable[[dict[str, Any]], Callable[[Any], Any]] | None
    latent_patch: Callable[[Any], int]
    latent_channels: Callable[[Any], int]
    default_latent_size: Callable[[Any], int]
    context_dim: Callable[[Any], int]
    image_task_steps: int = 50
    pipelines: tuple[str, ...] = ()
    reference_pipelines: tuple[str, ...] = ()


def _flux_time(sched: dict[str, Any]) -> Callable[[Any], Any]:
    import jax.numpy as jnp

    n_train = jnp.float32(sched["num_train_timesteps"])
    # diffusers hands the transformer (sigma n_train, float32) / 1000, which the model multiplies by 1000
    return lambda t: (t * n_train) / jnp.float32(1000.0)


FOLDER_SPECS: dict[str, FolderSpec] = {
    "SD3Transformer2DModel": FolderSpec(
        family="sd3", text_stack="sd3", guidance="cfg", default_guidance_scale=7.0, custom_sigmas=False,
        # diffusers hands the transformer the scheduler's timesteps, sigma * num_train_timesteps
        timestep_scale=lambda sched: float(sched["num_train_timesteps"]), model_time=None,
        latent_patch=lambda cfg: cfg.patch_size, latent_channels=lambda cfg: cfg.in_channels,
        default_latent_size=lambda cfg: cfg.sample_size, context_dim=lambda cfg: cfg.joint_attention_dim,
        pipelines=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")),
    "FluxTransformer2DModel": FolderSpec(
        family="flux", text_stack="flux", guidance="embedded", default_guidance_scale=3.5, custom_sigmas=True,
        timestep_scale=lambda sched: 1000.0, model_time=_flux_time,
        latent_patch=lambda cfg: 2, latent_channels=lambda cfg: cfg.latent_channels,
        # diffusers' default_sample_size: 128 latents (1024 pixels with the FLUX VAE)
        default_latent_size=lambda cfg: 128, context_dim=lambda cfg: cfg.joint_attention_dim,
        image_task_steps=28,     # FluxImg2ImgPipeline's and FluxInpaintPipeline's default, unlike SD3's 50
        pipelines=("FluxPipeline", "FluxKontextPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
        reference_pipelines=("FluxKontextPipeline",)),
}


def register_folder_spec(transformer_class: str, spec: FolderSpec) -> FolderSpec:
    """Read folders whose ``model_index.json`` names one of ``spec.pipelines`` with ``spec`` (``transformer_class``:
    the transformer's diffusers class, the key of the registry)."""
    existing = FOLDER_SPECS.get(transformer_class)
    if existing is not None and existing is not spec:
        raise ConfigError(f"a folder spec for {transformer_class!r} is already registered")
    FOLDER_SPECS[transformer_class] = spec
    return spec


def pipeline_classes() -> dict[str, FolderSpec]:
    """``{model_index _class_name: spec}`` of every readable pipeline folder."""
    return {name: spec for spec in FOLDER_SPECS.values() for name in spec.pipelines}


def read_json(path: str, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; errors name ``what`` and the file."""
    if not os.path.isfile(path):
        raise ConfigError(f"{what}: {path} does not exist")
    try:
        with open(path) as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what}: {path} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{what}: {path} must hold a JSON object, got {type(value).__name__}")
    return value


def folder_components(folder: str, required: tuple[str, ...], optional: tuple[str, ...],
                      pipeline: str) -> dict[str, str]:
    """``{component: sub-folder}`` of the present components of ``model_index.json``; missing ones raise, naming
    the folder and what the ``pipeline`` needs."""
    index = read_json(os.path.join(folder, "model_index.json"), f"{pipeline} pipeline folder")
    present = {}
    for name in required + optional:
        entry = index.get(name)
        # diffusers writes [null, null] for a component saved as None
        if entry is None or (isinstance(entry, (list, tuple)) and entry[0] is None):
            if name in required:
                raise ConfigError(f"{folder}/model_index.json: component {name!r} is missing (the {pipeline} pipeline "
                                  f"needs {list(required)}; {list(optional) or 'none'} are optional)")
            continue
        path = os.path.join(folder, name)
        if not os.path.isdir(path):
            raise ConfigError(f"{folder}: component folder {name}/ is missing (listed in model_index.json)")
        present[name] = path
    models = [n for n in present if n.startswith("text_encoder") or n in ("transformer", "vae")]
    for model in models:
        tokenizer = model.replace("text_encoder", "tokenizer")
        if model.startswith("text_encoder") and model in optional and tokenizer not in present:
            raise ConfigError(f"{folder}: {model}/ is present but {tokenizer} is missing; the encoder needs both or "
                              "neither")
        if not os.path.isfile(os.path.join(present[model], "config.json")):
            raise ConfigError(f"{folder}: {model}/config.json is missing")
    for tokenizer in [n for n in present if n.startswith("tokenizer") and n in optional]:
        model = tokenizer.replace("tokenizer", "text_encoder")
        if model not in present:
            raise ConfigError(f"{folder}: {tokenizer}/ is present but {model} is missing; the encoder needs both or "
                              "neither")
    return present


def folder_spec(folder: str) -> tuple[str, FolderSpec]:
    """``(pipeline class, spec)`` of a pipeline folder, from its ``model_index.json``."""
    index = read_json(os.path.join(folder, "model_index.json"), "pipeline folder")
    kind = index.get("_class_name")
    classes = pipeline_classes()
    if kind not in classes:
        raise ConfigError(f"{folder}/model_index.json: _class_name={kind!r} is not supported; valid: {sorted(classes)}")
    return str(kind), classes[kind]


def load_folder(path: str | os.PathLike, dtype: str = "float32", max_sequence_length: int | None = None) -> Any:
    """The ``LoadedModel`` of a pipeline folder. ``dtype``: compute dtype of the transformer and the VAE (text
    encoders run in float32); ``max_sequence_length``: T5 tokens (default: the text stack's, diffusers')."""
    from mmdit_jax.interop.vae import load_vae
    from mmdit_jax.pipelines.loaded import FolderGrid, LoadedModel

    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise ConfigError(f"pipeline folder {folder!r} does not exist (no downloads: point to local files)")
    pipeline, spec = folder_spec(folder)
    stack = TEXT_STACKS[spec.text_stack]
    parts = folder_components(folder, ("transformer", "vae", "scheduler") + stack.required, stack.optional,
                              pipeline)
    sched = scheduler_config(read_json(os.path.join(parts["scheduler"], "scheduler_config.json"),
                                       "scheduler config"))
    cls = get_family(spec.family)
    model_cfg, variables = cls.load_pretrained(parts["transformer"])
    model_cfg = dataclasses.replace(model_cfg, dtype=dtype)
    model_cfg.validate()
    schedule = RectifiedFlowSchedule(shift=float(sched["shift"]), num_train_timesteps=int(sched["num_train_timesteps"]))
    family = cls(model_cfg, schedule, timestep_scale=spec.timestep_scale(sched))

    vae_cfg, vae_variables = load_vae(parts["vae"])
    vae_cfg = dataclasses.replace(vae_cfg, dtype=dtype)
    vae_cfg.validate()
    channels = spec.latent_channels(model_cfg)
    if vae_cfg.latent_channels != channels:
        raise ConfigError(f"vae.latent_channels={vae_cfg.latent_channels} differs from the transformer's "
                          f"{channels} latent channels")
    text = text_stack_from_folder(spec.text_stack, parts, max_sequence_length, spec.context_dim(model_cfg))
    family.check_conditioning(text.shapes())
    grid = FolderGrid(sched, spec.custom_sigmas, spec.latent_patch(model_cfg))
    return LoadedModel(family=family, variables=variables, text=text, codec=KLCodec(vae_cfg, vae_variables),
                       grid=grid, spec=spec, pipeline=pipeline, source=folder)


def folder_grid(sched: dict[str, Any], custom_sigmas: bool, num_inference_steps: int, tokens: int,
                sigmas: Any = None) -> tuple[np.ndarray, float | None]:
    """``(sigmas (n + 1,) float32, mu)`` as a diffusers pipeline's ``retrieve_timesteps`` sets them for ``tokens``
    latent tokens: FLUX's custom grid (or ``sigmas``) shifted by ``mu``; SD3's scheduler grid, ``mu`` only under
    ``use_dynamic_shifting``."""
    if custom_sigmas:
        custom = flux_sigmas(num_inference_steps) if sigmas is None else np.asarray(sigmas, np.float64)
        mu = dynamic_mu(sched, tokens)
        return flow_match_schedule(None, sched, sigmas=custom, mu=mu)[0], mu
    if sigmas is not None:
        raise ConfigError("sigmas: a custom grid is a FLUX pipeline option; this folder's scheduler sets the grid")
    mu = dynamic_mu(sched, tokens) if sched["use_dynamic_shifting"] else None
    return flow_match_schedule(num_inference_steps, sched, mu=mu)[0], mu
