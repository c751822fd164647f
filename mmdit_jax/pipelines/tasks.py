"""The tasks a pipeline runs, and the host-side rules of each (as diffusers' pipelines apply them):

==============  =========================================================================================
task            what the compiled program does with the latents ``z`` (grid ``sigma_0 > ... > sigma_n``)
==============  =========================================================================================
text_to_image   ``z_0 ~ N(0, I)`` (or given), Euler on the whole grid, decode
image_to_image  SDEdit: ``x0`` = VAE posterior sample of the image, ``t_s = img2img_start(n, strength)``,
                ``z = sigma_{t_s} noise + (1 - sigma_{t_s}) x0``, Euler on ``sigmas[t_s:]``, decode
inpainting      as image_to_image, and after every step ``z <- (1 - m) scale_noise(x0, noise, sigma_{i+1}) + m z``
                (``m`` the latent mask, 1 = repaint); from ``noise`` itself at strength 1
reference       in-context editing (FLUX.1 Kontext): the posterior *mode* of the reference image joins the image
                tokens of both guidance branches with its own positions, never noised; text-to-image otherwise
==============  =========================================================================================

Every task runs with every guidance of ``mmdit_jax.pipelines.guidance`` its family supports. On a training workdir
(``run_inputs``) text-to-image is the run's own sampler, and image-to-image and inpainting integrate its
probability-flow ODE (``diffusion.sdedit.sdedit_ode`` / ``inpaint_ode``) instead of the FlowMatchEuler grid.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.diffusion.samplers import make_sampler
from mmdit_jax.diffusion.schedules import Schedule
from mmdit_jax.diffusion.sdedit import img2img_start, ode_method
from mmdit_jax.families import Family
from mmdit_jax.pipelines.images import preprocess_images, preprocess_mask

if TYPE_CHECKING:
    from mmdit_jax.pipelines.pipeline import Pipeline

Array = jax.Array
TASKS = ("text_to_image", "image_to_image", "inpainting", "reference")
# diffusers' defaults (image tasks of a folder: its ``FolderSpec.image_task_steps``)
DEFAULT_STEPS = {"text_to_image": 28, "reference": 28, "image_to_image": 50, "inpainting": 50}

# (width, height) pairs Kontext was trained at (diffusers' pipeline_flux_kontext, BFL's util.py)
PREFERRED_KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)
DEFAULT_MAX_AREA = 1024 ** 2


@dataclasses.dataclass(frozen=True)
class Plan:
    """The static part of one compiled program."""

    task: str
    sigmas: tuple[float, ...]
    guided: bool
    options: tuple[tuple[str, Any], ...]
    slg_layers: tuple[int, ...] = ()
    sampler: tuple[tuple[str, Any], ...] | None = None
    shape: tuple[int, ...] = ()
    from_noise: bool = False
    decode_shift: bool = True
    ode: tuple[int, str, float] | None = None     # a workdir's (n_steps, method, strength) for SDEdit / inpainting


def task_of(image: Any, mask_image: Any, reference_image: Any) -> str:
    """The task the given images ask for; combinations that mean nothing raise."""
    if reference_image is not None:
        if image is not None or mask_image is not None:
            raise ConfigError("reference_image (in-context editing) cannot be combined with image / mask_image "
                              "(image-to-image, inpainting)")
        return "reference"
    if mask_image is not None:
        if image is None:
            raise ConfigError("mask_image needs the image it masks (image=...)")
        return "inpainting"
    return "text_to_image" if image is None else "image_to_image"


def slg_window(num_inference_steps: int, start: float, stop: float) -> np.ndarray:
    """``(n,)`` bool: the steps diffusers' ``StableDiffusion3Pipeline`` runs skip-layer guidance at,
    ``i > n start and i < n stop`` with its Python float products."""
    n = num_inference_steps
    return np.asarray([n * start < i < n * stop for i in range(n)], bool)


def noise_or(name: str, value: Any, shape: tuple[int, ...], key: Array, factor: int) -> Array:
    """``value`` as float32 of exactly ``shape`` (NHWC latents), or ``N(0, I)`` from ``key`` when None."""
    if value is None:
        return jax.random.normal(key, shape, jnp.float32)
    value = jnp.asarray(value, jnp.float32)
    if value.shape != shape:
        raise ConfigError(f"{name} must have shape (N, H / {factor}, W / {factor}, C) = {shape} NHWC (diffusers' NCHW "
                          f"latents, unpacked for FLUX, transposed), got {tuple(value.shape)}")
    return value


def check_batch(what: str, count: int, prompts: int) -> None:
    """``count`` images (or masks) must divide the ``prompts`` they are tiled to, as diffusers tiles them."""
    if prompts % count:
        noun = "masks" if what == "mask_image" else "images"
        raise ConfigError(f"{what} holds {count} {noun} for {prompts} prompts: give one, or one per prompt (any "
                          f"count dividing {prompts}, tiled as diffusers does)")


def preferred_kontext_size(height: int, width: int, multiple: int = 16) -> tuple[int, int]:
    """``(height, width)`` diffusers' ``_auto_resize`` resizes an ``(height, width)`` reference image to: the
    preferred resolution of the nearest aspect ratio, floored to ``multiple``."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return h // multiple * multiple, w // multiple * multiple


def kontext_target_size(height: int, width: int, max_area: int | None, multiple: int) -> tuple[int, int]:
    """The generated size: ``(height, width)`` rescaled to ``max_area`` pixels at the same aspect ratio and floored
    to ``multiple`` (diffusers' ``FluxKontextPipeline.__call__``); unchanged with ``max_area=None``."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    if max_area is None:
        return height, width
    check_positive_int("max_area", max_area)
    aspect = width / height
    w = round((max_area * aspect) ** 0.5) // multiple * multiple
    h = round((max_area / aspect) ** 0.5) // multiple * multiple
    if h <= 0 or w <= 0:
        raise ConfigError(f"max_area={max_area} is too small for a {height}x{width} aspect ratio at multiples of "
                          f"{multiple}: the target would be {h}x{w}")
    return h, w


def net_options(family: Family, remove_pooled: bool, skip_layers: Sequence[int],
                skip_guidance_layers: Sequence[int]) -> tuple[tuple[str, Any], ...]:
    """The ``family.net`` options of a call as a plan entry; dropping blocks needs a family whose ``net`` takes
    ``skip_layers``."""
    options: tuple[tuple[str, Any], ...] = (("remove_pooled", True),) if remove_pooled else ()
    if ((tuple(skip_layers) or tuple(skip_guidance_layers))
            and "skip_layers" not in inspect.signature(family.net).parameters):
        raise ConfigError(f"skip_layers / skip_guidance_layers: model family {family.name!r} cannot skip blocks (the "
                          "sd3 family can)")
    if tuple(skip_layers):
        options += (("skip_layers", tuple(int(i) for i in skip_layers)),)
    return options


def frozen_sampler(config: Mapping[str, Any], schedule: Schedule,
                   parameterization: str) -> tuple[tuple[str, Any], ...]:
    """A sampler config of the core as a plan entry (sorted, lists as tuples), built once so that errors name the
    sampler's field."""
    spec = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(config).items()))
    make_sampler(dict(spec), schedule, parameterization)
    return spec


def skip_layer_guidance(task: str, layers: Sequence[int], depth: int, num_inference_steps: int, start: float,
                        stop: float, guided: bool) -> tuple[tuple[int, ...], np.ndarray]:
    """``(blocks skipped in the guidance pass, (n,) bool steps they are skipped at)`` of SD3.5's skip-layer guidance
    on a transformer of ``depth`` blocks; ``()`` blocks when ``layers`` is empty or the window holds no step."""
    layers = tuple(int(i) for i in layers)
    window = slg_window(num_inference_steps, start, stop)
    if not layers:
        return (), window
    if task != "text_to_image":
        raise ConfigError("skip_guidance_layers: skip-layer guidance runs with text-to-image only")
    if any(not 0 <= i < depth for i in layers):
        raise ConfigError(f"skip_guidance_layers={list(layers)} must index blocks in [0, {depth}) of this "
                          f"transformer (SD3.5 medium: [7, 8, 9])")
    if not guided:
        raise ConfigError("skip_guidance_layers needs classifier-free guidance (guidance_scale > 1); diffusers "
                          "ignores it otherwise")
    # a window without steps compiles the plain CFG program
    return (layers if window.any() else ()), window


def image_inputs(pipe: "Pipeline", n: int, image: Any, mask_image: Any, height: int | None,
                 width: int | None) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int, int]]:
    """``(images (N_img, H, W, 3) in [-1, 1], mask (N_mask, H / f, W / f, 1) or None, latent shape (n, H / f,
    W / f, C))`` of image-to-image and inpainting for ``n`` prompts. They run at the image's size (nothing is
    resized), so ``height`` / ``width``, when given, must be it; image and mask counts must divide ``n``."""
    images = preprocess_images(image)
    size = images.shape[1:3]
    for name, value, have in zip(("height", "width"), (height, width), size):
        if value is not None and value != have:
            raise ConfigError(f"{name}={value}: image-to-image and inpainting generate at the image's size "
                              f"{size[0]}x{size[1]} (nothing is resized)")
    pipe.check_size(*size)
    check_batch("image", images.shape[0], n)
    mask = None
    if mask_image is not None:
        mask = preprocess_mask(mask_image, *size, pipe.vae_scale_factor)
        check_batch("mask_image", mask.shape[0], n)
    return images, mask, pipe.latent_shape(n, *size)


def run_inputs(pipe: "Pipeline", task: str, n: int, height: int | None, width: int | None,
               num_inference_steps: int | None, seed: int, image: Any, mask_image: Any, strength: float, noise: Any,
               options: tuple[tuple[str, Any], ...],
               sampler: Mapping[str, Any] | None) -> tuple[Plan, dict[str, Any]]:
    """``(plan, arrays)`` of a workdir's call for ``n`` prompts: text-to-image with the run's sampler (or
    ``sampler``) from ``fold_in(PRNGKey(seed), 0)``, as ``SamplingPipeline`` draws one prompt; image tasks on its
    probability-flow ODE with ``noise`` from ``PRNGKey(seed)`` and the posterior mean of a latent run's VAE."""
    grid = pipe.model.grid
    if num_inference_steps is not None:
        check_positive_int("num_inference_steps", num_inference_steps)
    if task == "text_to_image":
        default = pipe.default_height_width()
        height, width = (default[0] if height is None else height), (default[1] if width is None else width)
        pipe.check_size(height, width)
        config = dict(grid.sampler if sampler is None else sampler)
        if num_inference_steps is not None:
            if "n_steps" not in config:
                raise ConfigError(f"num_inference_steps: sampler {config.get('name')!r} of this run has no "
                                  "n_steps option")
            config["n_steps"] = int(num_inference_steps)
        spec = frozen_sampler(config, pipe.family.schedule, grid.parameterization)
        arrays = {"key": jax.random.fold_in(jax.random.PRNGKey(seed), 0)}
        return Plan(task, (), True, options, sampler=spec, shape=pipe.latent_shape(n, height, width)), arrays
    if sampler is not None:
        raise ConfigError("sampler: image-to-image and inpainting of a workdir run on its probability-flow ODE")
    n_steps, method = ode_method(grid.sampler, num_inference_steps)
    img2img_start(n_steps, strength)      # errors name strength
    images, mask, shape = image_inputs(pipe, n, image, mask_image, height, width)
    arrays = {"images": images, "noise": noise_or("noise", noise, shape, jax.random.PRNGKey(seed),
                                                  pipe.vae_scale_factor)}
    if mask is not None:
        arrays["mask"] = mask
    return Plan(task, (), True, options, shape=shape, ode=(n_steps, method, float(strength))), arrays
