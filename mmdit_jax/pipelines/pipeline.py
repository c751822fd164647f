"""One pipeline for every family and task of a diffusers pipeline folder, equal to diffusers' pipelines.

    pipe = Pipeline.from_folder("/path/to/stable-diffusion-3.5-medium")       # or FLUX.1 dev / schnell / Kontext
    images = pipe(prompts, seed=0)                                              (N, H, W, 3) uint8
    x = pipe.generate(prompts, height=..., width=..., latents=z)                (N, H, W, 3) float32, about [-1, 1]
    x = pipe.generate(prompts, image=u8, strength=0.6)                          image-to-image (SDEdit)
    x = pipe.generate(prompts, image=u8, mask_image=m)                          inpainting
    x = pipe.generate(prompts, reference_image=u8)                              Kontext editing (Kontext folders)

The steps, as diffusers does them (no torch at run time): prompts -> the family's text stack
(``components.text``); latents ``(B, H / f, W / f, C)`` NHWC from ``PRNGKey(seed)`` or given; the folder's
FlowMatchEuler grid (``folders.FolderSpec``: the scheduler's or FLUX's custom one, ``mu`` of the token count);
Euler ``z <- z + (sigma_{i+1} - sigma_i) v`` with the guided net (``guidance.guided_net``: CFG for SD3, embedded
guidance and optional true CFG for FLUX, skip-layer guidance); ``z / scaling_factor + shift_factor`` -> VAE
decoder; uint8 by ``images.to_uint8``. The task (``tasks``) is chosen by the images given. Each (task, shapes,
steps, options) is one compiled program: encode, loop and decode; the guidance scales are traced.

``sampler``: instead of the FlowMatchEuler loop, any sampler of the core by config (e.g. ``{"name": "ode",
"n_steps": 20, "method": "heun"}``) on the transformer's rectified-flow schedule, from ``PRNGKey(seed)``.
Study switches: ``remove_pooled`` (y = e_t), ``steering = (p+ prompts, p- prompts, w)`` (both guidance halves),
``skip_layers`` (blocks dropped from every call; SD3).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.components.text import Steering, pooled_steering
from mmdit_jax.diffusion.flow_match import flow_match_euler
from mmdit_jax.diffusion.samplers import make_sampler
from mmdit_jax.diffusion.sdedit import img2img_start, inpaint_flow_match_euler, inpaint_ode, scale_noise, sdedit_ode
from mmdit_jax.pipelines import tasks
from mmdit_jax.pipelines.guidance import guided_net
from mmdit_jax.pipelines.images import preprocess_images, to_uint8
from mmdit_jax.pipelines.loaded import LoadedModel, RunGrid
from mmdit_jax.pipelines.tasks import Plan

Array = jax.Array


class Pipeline:
    """A ``LoadedModel`` and the compiled programs of its tasks (module docstring)."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self._run = jax.jit(self._program, static_argnames=("plan",))

    @classmethod
    def from_folder(cls, path: str | os.PathLike, dtype: str = "float32",
                    max_sequence_length: int | None = None) -> "Pipeline":
        """A ``save_pretrained`` pipeline folder (``folders.load_folder``)."""
        from mmdit_jax.pipelines.folders import load_folder

        return cls(load_folder(path, dtype, max_sequence_length))

    @classmethod
    def from_workdir(cls, config: Any, workdir: str, allow_untrained: bool = False) -> "Pipeline":
        """A training workdir's newest EMA weights (``trained_model.load_trained``) with the run's sampler."""
        from mmdit_jax.pipelines.trained_model import load_trained

        return cls(LoadedModel.from_trained(load_trained(config, workdir, allow_untrained)))

    @property
    def is_run(self) -> bool:
        """Whether the model comes from a training workdir (its own sampler and size) rather than a folder."""
        return isinstance(self.model.grid, RunGrid)

    # ---- the parts ----------------------------------------------------------------------------------------------

    @property
    def family(self) -> Any:
        return self.model.family

    @property
    def variables(self) -> Any:
        return self.model.variables

    @variables.setter
    def variables(self, value: Any) -> None:
        self.model.variables = value

    @property
    def text(self) -> Any:
        return self.model.text

    @property
    def takes_reference(self) -> bool:
        """Whether the folder's model edits from a reference image (FLUX.1 Kontext)."""
        return self.model.pipeline in self.model.spec.reference_pipelines

    @property
    def vae_scale_factor(self) -> int:
        return self.model.codec.downscale

    @property
    def size_multiple(self) -> int:
        """Height and width are multiples of this: the VAE's downscale x the latent pixels per token side."""
        return self.vae_scale_factor * self.model.grid.latent_patch

    @property
    def default_size(self) -> int:
        """diffusers' default height and width in pixels (a workdir: its training height)."""
        if self.is_run:
            return self.model.spec.size[0]
        return self.model.spec.default_latent_size(self.family.config) * self.vae_scale_factor

    def default_height_width(self) -> tuple[int, int]:
        return self.model.spec.size if self.is_run else (self.default_size, self.default_size)

    @property
    def default_guidance_scale(self) -> float:
        return self.model.spec.default_guidance_scale

    def check_size(self, height: int, width: int, names: tuple[str, str] = ("height", "width")) -> None:
        """Errors name ``height`` / ``width`` unless both are positive multiples of ``size_multiple``."""
        if self.is_run:
            trained = self.model.spec.size
            for name, value, size in zip(names, (height, width), trained):
                if value != size:
                    raise ConfigError(f"{name}={value}: a workdir's model samples at its training size "
                                      f"{trained[0]}x{trained[1]}")
            return
        multiple = self.size_multiple
        for name, value in zip(names, (height, width)):
            check_positive_int(name, value)
            if value % multiple:
                raise ConfigError(f"{name}={value} must be divisible by {multiple} (the VAE's downscale "
                                  f"{self.vae_scale_factor} x {self.model.grid.latent_patch} latent pixels per "
                                  f"token); e.g. {name}={max(multiple, value - value % multiple)}")

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return batch, height // f, width // f, self.model.codec.latent_channels

    def grid(self, num_inference_steps: int, latent_height: int, latent_width: int,
             sigmas: Sequence[float] | None = None) -> tuple[np.ndarray, float | None]:
        """``(sigmas (n + 1,) float32, mu)`` as the diffusers pipeline's ``retrieve_timesteps`` sets them."""
        return self.model.grid.sigmas(num_inference_steps, latent_height, latent_width, sigmas)

    def encode_images(self, vae_variables: Any, images: Array, eps: Array | None = None) -> Array:
        """Images ``(B, H, W, 3)`` in [-1, 1] -> model latents (posterior sample with ``eps``, else the mode)."""
        return self.model.codec.encode(vae_variables, images, eps)

    # ---- prompts -> conditioning ----------------------------------------------------------------------------------

    def conditioning(self, prompts: Sequence[str] | str, negative_prompts: Sequence[str] | str | None = None,
                     guidance_scale: float | None = None, true_cfg_scale: float = 1.0,
                     steering: Steering | None = None,
                     remove_pooled: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None, float]:
        """``(cond, negative, cfg_scale)`` for N prompts; ``negative`` is None when the call is not guided.

        ``"cfg"`` folders (SD3): CFG at ``guidance_scale`` when it is > 1, negative prompt ``""`` by default.
        ``"embedded"`` folders (FLUX): ``cond["guidance"] = guidance_scale`` for a guidance-distilled transformer;
        true CFG at ``true_cfg_scale`` > 1, which needs ``negative_prompts`` (diffusers would silently skip it).
        """
        spec = self.model.spec
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ConfigError("prompts must hold at least one prompt")
        if steering is not None and remove_pooled:
            raise ConfigError("steering moves the pooled vector, which remove_pooled=True removes: use one of them")
        guidance_scale = spec.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        if not np.isfinite(guidance_scale) or not np.isfinite(true_cfg_scale):
            raise ConfigError(f"guidance_scale={guidance_scale} and true_cfg_scale={true_cfg_scale} must be finite")
        negatives = [negative_prompts] if isinstance(negative_prompts, str) else negative_prompts
        if self.text is None:
            raise ConfigError("this model is unconditional (its data set has no captions or its family reads no "
                              "text): sample it without prompts (python -m mmdit_jax --mode=sample)")
        if self.is_run:
            if true_cfg_scale != 1.0:
                raise ConfigError(f"true_cfg_scale={true_cfg_scale}: a workdir's model guides with guidance_scale")
            if negatives is not None and len(negatives) != len(prompts):
                raise ConfigError(f"negative_prompts has {len(negatives)} entries for {len(prompts)} prompts")
            cond = self.text.encode(prompts)
            if steering is not None:
                cond.update(pooled_steering(self.text.encode, steering, len(prompts)))
            # a run trained with dropped conditions guides always, against its configured negative by default
            negative = (self.text.negative(spec.negative, cond) if negatives is None
                        else self.text.encode(list(negatives)))
            return cond, negative, guidance_scale
        if spec.guidance == "cfg":
            if true_cfg_scale != 1.0:
                raise ConfigError(f"true_cfg_scale={true_cfg_scale}: this {self.model.pipeline} folder guides with "
                                  "guidance_scale (CFG); true_cfg_scale is for guidance-embedding models (FLUX)")
            scale = guidance_scale
            negatives = [""] * len(prompts) if negatives is None else list(negatives)
        else:
            scale = float(true_cfg_scale)
            if scale > 1.0 and negatives is None:
                raise ConfigError(f"true_cfg_scale={true_cfg_scale} > 1 needs negative_prompts (one per prompt); use "
                                  "true_cfg_scale=1 for the guidance-distilled model alone")
        if negatives is not None and len(negatives) != len(prompts):
            raise ConfigError(f"negative_prompts has {len(negatives)} entries for {len(prompts)} prompts")
        guided = scale > 1.0
        cond = self.text.encode(prompts)
        if steering is not None:
            cond.update(pooled_steering(self.text.encode, steering, len(prompts)))
        negative = self.text.encode(list(negatives)) if guided else None
        if spec.guidance == "embedded" and getattr(self.family.config, "guidance_embeds", False):
            for c in (cond, negative):
                if c is not None:
                    c["guidance"] = jnp.full((len(prompts),), guidance_scale, jnp.float32)
        return cond, negative, scale

    # ---- the compiled program ---------------------------------------------------------------------------------

    def _program(self, variables: Any, vae_variables: Any, arrays: dict[str, Array], cond: dict[str, Any],
                 negative: dict[str, Any] | None, scales: dict[str, Array], *, plan: Plan) -> Array:
        """Task inputs -> decoded images ``(N, H, W, 3)`` float32 (``tasks`` docstring)."""
        model, codec = self.model, self.model.codec
        x0 = None
        if "images" in arrays:
            x0 = codec.encode(vae_variables, arrays["images"], arrays.get("posterior_noise"))
            x0 = jnp.tile(x0, (plan.shape[0] // x0.shape[0], 1, 1, 1))
        if plan.task == "reference":
            cond = {**cond, "reference": x0}
            negative = None if negative is None else {**negative, "reference": x0}
        net = guided_net(model.family, model.family.prepare(variables), cond, negative if plan.guided else None,
                         scales["cfg"], options=dict(plan.options), slg_layers=plan.slg_layers,
                         slg_scale=scales["slg"])
        if model.spec.model_time is not None:
            time, inner = model.spec.model_time(model.grid.scheduler), net
            net = lambda x, t, *rest: inner(x, time(t), *rest)  # noqa: E731
        if plan.ode is not None:      # a workdir's image tasks on its probability-flow ODE
            n_steps, method, strength = plan.ode
            schedule, parameterization = model.family.schedule, model.grid.parameterization
            if plan.task == "inpainting":
                mask = jnp.tile(arrays["mask"], (plan.shape[0] // arrays["mask"].shape[0], 1, 1, 1))
                z = inpaint_ode(net, schedule, parameterization, x0, arrays["noise"], mask, n_steps, strength, method)
            else:
                z = sdedit_ode(net, schedule, parameterization, x0, arrays["noise"], n_steps, strength, method)
            return codec.decode(vae_variables, z)
        if plan.sampler is not None:
            parameterization = model.grid.parameterization if self.is_run else "velocity"
            sample = make_sampler(dict(plan.sampler), model.family.schedule, parameterization)
            return codec.decode(vae_variables, sample(net, arrays["key"], plan.shape))
        sigmas = np.asarray(plan.sigmas, np.float32)
        if plan.task == "inpainting":
            noise = arrays["noise"]
            mask = jnp.tile(arrays["mask"], (plan.shape[0] // arrays["mask"].shape[0], 1, 1, 1))
            x = noise if plan.from_noise else scale_noise(x0, noise, sigmas[0])
            z = inpaint_flow_match_euler(net, x, sigmas, x0, noise, mask)
        else:
            x = scale_noise(x0, arrays["noise"], sigmas[0]) if plan.task == "image_to_image" else arrays["latents"]
            z = flow_match_euler(net, x, sigmas, arrays["window"] if plan.slg_layers else None)
        return codec.decode(vae_variables, z, shift=plan.decode_shift)

    # ---- prompts -> images ------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str] | str, *, negative_prompts: Sequence[str] | str | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, true_cfg_scale: float = 1.0, seed: int = 0,
                 latents: Any = None, sigmas: Sequence[float] | None = None, image: Any = None,
                 mask_image: Any = None, strength: float = 0.6, reference_image: Any = None,
                 max_area: int | None = tasks.DEFAULT_MAX_AREA, noise: Any = None, posterior_noise: Any = None,
                 sample_posterior: bool = True, decode_shift: bool = True, skip_layers: Sequence[int] = (),
                 remove_pooled: bool = False, steering: Steering | None = None,
                 skip_guidance_layers: Sequence[int] = (), skip_layer_guidance_scale: float = 2.8,
                 skip_layer_guidance_start: float = 0.01, skip_layer_guidance_stop: float = 0.2,
                 sampler: Mapping[str, Any] | None = None) -> Array:
        """Decoded images ``(N, H, W, 3)`` float32 (about [-1, 1], unclipped) for N prompts.

        Task by the images given (``tasks``): none (text-to-image), ``image`` (image-to-image at ``strength`` in
        (0, 1]), ``image`` + ``mask_image`` (inpainting, 1 = repaint), ``reference_image`` (Kontext editing; the
        target size is ``height`` x ``width`` rescaled to ``max_area`` pixels, ``max_area=None`` keeps it). Images:
        ``(N_img, H, W, 3)`` or ``(H, W, 3)``, uint8 or float in [0, 1], ``N_img`` dividing N, sizes multiples of
        ``size_multiple`` (nothing is resized). Defaults follow diffusers: 28 steps (50 for image-to-image and
        inpainting), the folder's guidance scale and size.

        Noise: ``latents`` (text-to-image, reference) or ``noise`` and ``posterior_noise`` (image-to-image,
        inpainting, NHWC, drawn in that order from ``PRNGKey(seed)`` when absent); ``sample_posterior=False`` encodes
        the posterior mean. ``decode_shift=False`` decodes ``z / scaling_factor`` (diffusers' SD3 inpainting).
        ``sigmas``: a custom grid before the shift (FLUX). ``skip_guidance_layers`` and ``skip_layer_guidance_*``:
        SD3.5's skip-layer guidance (text-to-image, with CFG).
        """
        task = tasks.task_of(image, mask_image, reference_image)
        cond, negative, scale = self.conditioning(prompts, negative_prompts, guidance_scale, true_cfg_scale,
                                                  steering, remove_pooled)
        guided = negative is not None
        n = cond["context"].shape[0]
        options = tasks.net_options(self.family, remove_pooled, skip_layers, skip_guidance_layers)
        if self.is_run:
            if latents is not None or sigmas is not None or tuple(skip_guidance_layers) or reference_image is not None:
                raise ConfigError("latents, sigmas, skip_guidance_layers and reference_image are pipeline-folder "
                                  "options; a workdir's model samples with its own sampler (edit a workdir with the "
                                  "edit command)")
            plan, arrays = tasks.run_inputs(self, task, n, height, width, num_inference_steps, seed, image, mask_image,
                                            strength, noise, options, sampler)
            scales = {"cfg": jnp.float32(scale), "slg": jnp.float32(0.0)}
            return self._run(self.variables, self.model.codec.variables, arrays, cond, negative, scales, plan=plan)
        default_steps = (self.model.spec.image_task_steps if task in ("image_to_image", "inpainting")
                         else tasks.DEFAULT_STEPS[task])
        steps = len(sigmas) if sigmas is not None else (
            default_steps if num_inference_steps is None else num_inference_steps)
        check_positive_int("num_inference_steps", steps)
        arrays: dict[str, Any] = {}
        key = jax.random.PRNGKey(seed)
        f = self.vae_scale_factor
        plan_extra: dict[str, Any] = {}

        if task in ("image_to_image", "inpainting"):
            t_start = img2img_start(steps, strength)
            images, mask, shape = tasks.image_inputs(self, n, image, mask_image, height, width)
            key_posterior, key_noise = jax.random.split(key)
            if not sample_posterior and posterior_noise is not None:
                raise ConfigError("posterior_noise is unused with sample_posterior=False (the posterior mean is taken)")
            arrays["images"] = images
            if sample_posterior:
                arrays["posterior_noise"] = tasks.noise_or("posterior_noise", posterior_noise,
                                                           (images.shape[0],) + shape[1:], key_posterior, f)
            arrays["noise"] = tasks.noise_or("noise", noise, shape, key_noise, f)
            grid = self.grid(steps, shape[1], shape[2], sigmas)[0][t_start:]
            if mask is not None:
                arrays["mask"] = mask
                plan_extra = {"from_noise": strength == 1, "decode_shift": bool(decode_shift)}
        else:
            height = self.default_size if height is None else height
            width = self.default_size if width is None else width
            if task == "reference":
                if not self.takes_reference:
                    raise ConfigError(f"reference_image: this {self.model.pipeline} folder is not an in-context editor "
                                      f"(valid: {list(self.model.spec.reference_pipelines) or 'none of this family'});"
                                      " use image= and strength for SDEdit")
                height, width = tasks.kontext_target_size(height, width, max_area, self.size_multiple)
                images = preprocess_images(reference_image, "reference_image")
                self.check_size(*images.shape[1:3], names=("image height", "image width"))
                tasks.check_batch("reference_image", images.shape[0], n)
                arrays["images"] = images
            self.check_size(height, width)
            shape = self.latent_shape(n, height, width)
            grid = None
            if sampler is None:
                arrays["latents"] = tasks.noise_or("latents", latents, shape, key, f)
                grid = self.grid(steps, shape[1], shape[2], sigmas)[0]
        slg_layers, window = tasks.skip_layer_guidance(task, skip_guidance_layers,
                                                       getattr(self.family.config, "num_layers", 0), steps,
                                                       skip_layer_guidance_start, skip_layer_guidance_stop, guided)
        arrays["window"] = jnp.asarray(window)
        spec = None
        if sampler is not None:
            if task != "text_to_image" or latents is not None or slg_layers or sigmas is not None:
                raise ConfigError("sampler: a sampler of the core draws its own starting noise from the seed; latents, "
                                  "sigmas, skip_guidance_layers and image tasks use the default FlowMatchEuler loop")
            spec = tasks.frozen_sampler(sampler, self.family.schedule, "velocity")
            arrays["key"] = key
        plan = Plan(task, () if grid is None else tuple(float(s) for s in grid), guided, options, slg_layers, spec,
                    shape, **plan_extra)
        scales = {"cfg": jnp.float32(scale), "slg": jnp.float32(skip_layer_guidance_scale)}
        return self._run(self.variables, self.model.codec.variables, arrays, cond, negative, scales, plan=plan)

    def __call__(self, prompts: Sequence[str] | str, **kwargs: Any) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images (``generate``, then ``images.to_uint8``)."""
        return to_uint8(self.generate(prompts, **kwargs))
