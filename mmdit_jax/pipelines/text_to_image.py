"""SD3 / SD3.5 text-to-image from a local diffusers pipeline folder, equal to diffusers' ``StableDiffusion3Pipeline``.

    pipe = SD3Pipeline.from_folder("/path/to/stable-diffusion-3-medium-diffusers")
    images = pipe(prompts, height=1024, width=1024, seed=0)           (N, H, W, 3) uint8
    x = pipe.generate(prompts, height=..., width=..., latents=z)       (N, H, W, 3) float32, decoder output ~[-1, 1]

The steps, each as diffusers does them (no torch at run time):

* prompts -> ``(c, y)`` with ``SD3TextEncoders`` (``encode_prompt``: CLIP-L, CLIP-G, T5 or, without
  ``text_encoder_3``, zeros ``(B, max_sequence_length, joint_attention_dim)``); the negative prompt defaults to
  ``""``, encoded (not zeros);
* latents ``z ~ N(0, I)`` of shape ``(B, H / f, W / f, C)`` NHWC (``f`` the VAE's downscale), or given;
* the grid ``flow_match_schedule(n, scheduler_config.json)`` (with ``mu = calculate_shift`` of the latent token
  count when the config has ``use_dynamic_shifting``);
* Euler ``z <- z + (sigma_{i+1} - sigma_i) v`` with ``v = MMDiT(z, 1000 sigma_i, c, y)``; with guidance scale
  ``s > 1`` one batched call on ``[uncond; cond]`` and ``v = v_u + s (v_c - v_u)``, else the conditional branch alone;
* skip-layer guidance (``skip_guidance_layers``, SD3.5 medium's ``[7, 8, 9]``; only with CFG): at the steps ``i``
  with ``n start < i < n stop`` (a boolean per step, fixed on the host) one more conditional call with those
  blocks skipped, ``v <- v + w_slg (v_c - v_c^skip)``; outside the window that call is not made (``lax.cond``);
* ``z / scaling_factor + shift_factor`` -> VAE decoder -> ``VaeImageProcessor.postprocess``:
  ``clip(x / 2 + 0.5, 0, 1)``, then ``round(255 u)`` for uint8.

The loop and the decoder run as one compiled program per (batch, size, steps, options). ``skip_layers`` drops
the given blocks from every model call (the ablation of ``MMDiT``), unlike skip-layer guidance. Prompt encoding,
size checks, the noise argument, the guided velocity and the decoder are shared with ``image_to_image.SD3Img2Img``
and ``inpainting.SD3Inpaint``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.diffusion.flow_match import (
    dynamic_mu,
    flow_match_euler,
    flow_match_schedule,
    scheduler_config,
)
from mmdit_jax.diffusion.guidance import classifier_free_guidance
from mmdit_jax.diffusion.samplers import make_sampler
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule
from mmdit_jax.families.sd3 import SD3Family
from mmdit_jax.interop.vae import load_vae
from mmdit_jax.models.text.conditioning import Encoder, SD3TextEncoders
from mmdit_jax.models.text.tokenizers import PromptTokenizer
from mmdit_jax.models.vae import (
    AutoencoderKL,
    VAEConfig,
    denormalize_latents,
    normalize_latents,
)
from mmdit_jax.pipelines.text import encoder_from_folder

Array = jax.Array
Steering = tuple[Sequence[str], Sequence[str], float]
Conditioning = tuple[dict[str, Any], dict[str, Any] | None, bool]     # (cond, negative or None, guided)

CLIP_MAX_LENGTH = 77          # diffusers' tokenizer_max_length for SD3's CLIP tokenizers
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
OPTIONAL = ("text_encoder_3", "tokenizer_3")     # SD3 runs without T5, as diffusers does


def to_unit(images: Any) -> np.ndarray:
    """Decoder output in [-1, 1] -> float32 in [0, 1]: ``VaeImageProcessor.postprocess(output_type="np")``."""
    return np.clip(np.asarray(images, np.float32) / np.float32(2) + np.float32(0.5), 0.0, 1.0)


def to_uint8(images: Any) -> np.ndarray:
    """Decoder output in [-1, 1] -> uint8 as diffusers' ``numpy_to_pil``: ``round(255 clip(x / 2 + 0.5))``."""
    return (to_unit(images) * np.float32(255)).round().astype(np.uint8)


def slg_window(num_inference_steps: int, start: float, stop: float) -> np.ndarray:
    """``(n,)`` bool: the steps diffusers' ``StableDiffusion3Pipeline`` runs skip-layer guidance at,
    ``i > n start and i < n stop`` with its Python float products."""
    n = num_inference_steps
    return np.asarray([n * start < i < n * stop for i in range(n)], bool)


def _read_json(path: str, what: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"{what}: {path} does not exist")
    with open(path) as f:
        return json.load(f)


def _components(folder: str, required: tuple[str, ...] = REQUIRED, optional: tuple[str, ...] = OPTIONAL,
                pipeline: str = "SD3") -> dict[str, str]:
    """``{component: sub-folder}`` of the present components of ``model_index.json``; missing ones raise.
    ``required`` / ``optional`` / ``pipeline`` (its name in errors) default to SD3's."""
    index = _read_json(os.path.join(folder, "model_index.json"), f"{pipeline} pipeline folder")
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
    if ("text_encoder_3" in present) != ("tokenizer_3" in present):
        have, lack = ("text_encoder_3", "tokenizer_3") if "text_encoder_3" in present else ("tokenizer_3",
                                                                                               "text_encoder_3")
        raise ConfigError(f"{folder}: {have}/ is present but {lack} is missing; T5 needs both or neither")
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if name in present and not os.path.isfile(os.path.join(present[name], "config.json")):
            raise ConfigError(f"{folder}: {name}/config.json is missing")
    return present


def noise_or(name: str, value: Any, shape: tuple[int, ...], key: Array, factor: int, layout: str) -> Array:
    """``value`` as float32 of exactly ``shape`` (NHWC latents), or ``N(0, I)`` from ``key`` when None; ``layout``
    says in the error how a pipeline's diffusers latents map to NHWC."""
    if value is None:
        return jax.random.normal(key, shape, jnp.float32)
    value = jnp.asarray(value, jnp.float32)
    if value.shape != shape:
        raise ConfigError(f"{name} must have shape (N, H / {factor}, W / {factor}, C) = {shape} NHWC ({layout}), "
                          f"got {tuple(value.shape)}")
    return value


class SD3Pipeline:
    """The transformer (as an ``SD3Family``), VAE, text encoders and scheduler config of one pipeline folder."""

    def __init__(self, family: SD3Family, variables: Any, vae_config: VAEConfig, vae_variables: Any,
                 text: SD3TextEncoders, scheduler: dict[str, Any]):
        self.family = family
        self.variables = jax.device_put(variables)
        self.vae_config = vae_config
        self.vae_variables = jax.device_put(vae_variables)
        self.text = text
        self.scheduler = scheduler
        self.vae = AutoencoderKL(vae_config)
        self._run = jax.jit(self._denoise_and_decode,
                            static_argnames=("sigmas", "guided", "skip_layers", "remove_pooled", "slg_layers"))
        self._run_sampler = jax.jit(self._sample_and_decode,
                                    static_argnames=("sampler", "shape", "guided", "skip_layers", "remove_pooled"))

    @classmethod
    def from_folder(cls, path: str | os.PathLike, dtype: str = "float32",
                    max_sequence_length: int = 256) -> "SD3Pipeline":
        """Load a ``StableDiffusion3Pipeline.save_pretrained`` folder. ``dtype``: compute dtype of the transformer
        and the VAE (text encoders run in float32); ``max_sequence_length``: T5 tokens (diffusers' default 256)."""
        folder = os.fspath(path)
        if not os.path.isdir(folder):
            raise ConfigError(f"SD3 pipeline folder {folder!r} does not exist (no downloads: point to local files)")
        check_positive_int("max_sequence_length", max_sequence_length)
        parts = _components(folder)

        sched = scheduler_config(_read_json(os.path.join(parts["scheduler"], "scheduler_config.json"),
                                            "scheduler config"))
        mmdit_cfg, variables = SD3Family.load_pretrained(parts["transformer"])
        mmdit_cfg = dataclasses.replace(mmdit_cfg, dtype=dtype)
        mmdit_cfg.validate()
        # diffusers hands the transformer the scheduler's timesteps, sigma * num_train_timesteps
        schedule = RectifiedFlowSchedule(shift=float(sched["shift"]),
                                         num_train_timesteps=int(sched["num_train_timesteps"]))
        family = SD3Family(mmdit_cfg, schedule, timestep_scale=float(sched["num_train_timesteps"]))

        vae_cfg, vae_variables = load_vae(parts["vae"])
        vae_cfg = dataclasses.replace(vae_cfg, dtype=dtype)
        vae_cfg.validate()
        if vae_cfg.latent_channels != mmdit_cfg.in_channels:
            raise ConfigError(f"vae.latent_channels={vae_cfg.latent_channels} differs from the transformer's "
                              f"in_channels={mmdit_cfg.in_channels}")

        def encoder(enc: str, tok: str, kind: str, max_length: int) -> Encoder:
            return encoder_from_folder(parts[enc], PromptTokenizer(parts[tok], kind, max_length), kind, f"{enc}/")

        t5 = (encoder("text_encoder_3", "tokenizer_3", "t5", max_sequence_length) if "text_encoder_3" in parts
              else None)
        text = SD3TextEncoders(encoder("text_encoder", "tokenizer", "clip", CLIP_MAX_LENGTH),
                               encoder("text_encoder_2", "tokenizer_2", "clip", CLIP_MAX_LENGTH),
                               t5, mmdit_cfg.joint_attention_dim, max_sequence_length)
        return cls(family, variables, vae_cfg, vae_variables, text, sched)

    # ---- sizes ------------------------------------------------------------------------------------------------

    @property
    def vae_scale_factor(self) -> int:
        return self.vae_config.downscale

    @property
    def default_size(self) -> int:
        """diffusers' default height and width: the transformer's ``sample_size`` latents, in pixels."""
        return self.family.config.sample_size * self.vae_scale_factor

    def check_size(self, height: int, width: int) -> None:
        """Errors name ``height`` / ``width`` unless both are multiples of the VAE factor x patch size."""
        multiple = self.vae_scale_factor * self.family.config.patch_size
        for name, value in (("height", height), ("width", width)):
            check_positive_int(name, value)
            if value % multiple:
                raise ConfigError(f"{name}={value} must be divisible by {multiple} (the VAE's downscale "
                                  f"{self.vae_scale_factor} x patch_size {self.family.config.patch_size}); "
                                  f"e.g. {name}={max(multiple, value - value % multiple)}")

    def grid(self, num_inference_steps: int, latent_height: int, latent_width: int) -> np.ndarray:
        """``sigmas (n + 1,)`` float32 as the pipeline's ``retrieve_timesteps`` sets them (mu from the latent size)."""
        mu = None
        if self.scheduler["use_dynamic_shifting"]:
            p = self.family.config.patch_size
            mu = dynamic_mu(self.scheduler, (latent_height // p) * (latent_width // p))
        return flow_match_schedule(num_inference_steps, self.scheduler, mu=mu)[0]

    # ---- pieces shared by the text-to-image, image-to-image and inpainting programs -----------------------------

    def velocity(self, variables: Any, cond: dict[str, Any], negative: dict[str, Any] | None,
                 guidance_scale: Array, *, guided: bool, skip_layers: tuple[int, ...], remove_pooled: bool,
                 slg_layers: tuple[int, ...] = (), slg_scale: Array | None = None) -> Callable[..., Array]:
        """The (guided) velocity ``net(x, t)`` of prepared ``variables``; with ``slg_layers``, ``net(x, t, in_window)``
        adds skip-layer guidance ``w_slg (v_c - v_c^skip)`` where ``in_window`` (a traced bool) is set."""
        family = self.family
        options = {"remove_pooled": remove_pooled, "skip_layers": skip_layers}
        if not guided:
            return family.net(variables, cond, **options)
        if not slg_layers:
            cfg = classifier_free_guidance(lambda v, x, t, c: family.net(v, c, **options)(x, t), guidance_scale)
            return lambda x, t: cfg(variables, x, t, (cond, negative))
        both = family.net(variables, jax.tree_util.tree_map(lambda u, c: jnp.concatenate([u, c]), negative, cond),
                          **options)
        # the ablation's blocks stay dropped in the skip-layer call too
        skipped = family.net(variables, cond, remove_pooled=remove_pooled,
                             skip_layers=tuple(sorted(set(skip_layers) | set(slg_layers))))

        def net(x: Array, t: Array, in_window: Array) -> Array:
            v_u, v_c = jnp.split(both(jnp.concatenate([x, x]), jnp.concatenate([t, t])), 2)
            v = v_u + guidance_scale * (v_c - v_u)
            return jax.lax.cond(in_window, lambda: v + (v_c - skipped(x, t)) * slg_scale, lambda: v)

        return net

    def decode(self, vae_variables: Any, z: Array, shift: bool = True) -> Array:
        """Model latents ``(B, h, w, C)`` -> decoder output ``(B, f h, f w, 3)``: ``z / scaling_factor (+ shift)``."""
        z = denormalize_latents(z, self.vae_config) if shift else z / self.vae_config.scaling_factor
        return self.vae.apply(vae_variables, z, method="decode")

    def encode_images(self, vae_variables: Any, images: Array, eps: Array | None) -> Array:
        """Images ``(B, H, W, 3)`` in [-1, 1] -> model latents ``(mean + exp(logvar / 2) eps - shift) * scale``
        (diffusers' ``retrieve_latents`` posterior sample; ``eps=None``: the mean, its ``sample_mode="argmax"``)."""
        mean, logvar = self.vae.apply(vae_variables, images, method="encode")
        z = mean if eps is None else mean + jnp.exp(0.5 * logvar) * eps
        return normalize_latents(z, self.vae_config)

    def conditioning(self, prompts: Sequence[str] | str, negative_prompts: Sequence[str] | None,
                     guidance_scale: float, steering: Steering | None = None,
                     remove_pooled: bool = False) -> Conditioning:
        """``(cond, negative, guided)`` for N prompts; ``negative`` (``""`` by default) is encoded only when
        ``guided`` (``guidance_scale > 1``, diffusers' ``do_classifier_free_guidance``)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ConfigError("prompts must hold at least one prompt")
        negatives = [""] * len(prompts) if negative_prompts is None else list(negative_prompts)
        if len(negatives) != len(prompts):
            raise ConfigError(f"negative_prompts has {len(negatives)} entries for {len(prompts)} prompts")
        if steering is not None and remove_pooled:
            raise ConfigError("steering moves the pooled vector, which remove_pooled=True removes: use one of them")
        guided = guidance_scale > 1.0
        cond = self.encode(prompts, steering)
        negative = None
        if guided:
            negative = self.encode(negatives)
            if "pooled_steering" in cond:       # the batch is [negative; cond]: steer both halves alike
                negative["pooled_steering"] = cond["pooled_steering"]
        return cond, negative, guided

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return batch, height // f, width // f, self.family.config.in_channels

    def noise(self, name: str, value: Any, shape: tuple[int, ...], key: Array) -> Array:
        """``value`` as float32 of exactly ``shape`` (NHWC latents), or ``N(0, I)`` from ``key`` when None."""
        return noise_or(name, value, shape, key, self.vae_scale_factor, "diffusers' NCHW latents transposed")

    def _skip_layer_guidance(self, layers: Sequence[int], num_inference_steps: int, start: float, stop: float,
                             guided: bool) -> tuple[tuple[int, ...], np.ndarray]:
        layers = tuple(int(i) for i in layers)
        depth = self.family.config.num_layers
        if any(not 0 <= i < depth for i in layers):
            raise ConfigError(f"skip_guidance_layers={list(layers)} must index blocks in [0, {depth}) of this "
                              f"transformer (SD3.5 medium: [7, 8, 9])")
        if layers and not guided:
            raise ConfigError("skip_guidance_layers needs classifier-free guidance (guidance_scale > 1); diffusers "
                              "ignores it otherwise")
        window = slg_window(num_inference_steps, start, stop)
        # a window without steps compiles the plain CFG program
        return (layers if window.any() else ()), window

    # ---- the compiled program ---------------------------------------------------------------------------------

    def _denoise_and_decode(self, variables: Any, vae_variables: Any, latents: Array, cond: dict[str, Any],
                            negative: dict[str, Any], guidance_scale: Array, window: Array, slg_scale: Array, *,
                            sigmas: tuple[float, ...], guided: bool, skip_layers: tuple[int, ...],
                            remove_pooled: bool, slg_layers: tuple[int, ...]) -> Array:
        """latents ``(B, h, w, C)`` -> decoded images ``(B, f h, f w, 3)`` float32."""
        net = self.velocity(self.family.prepare(variables), cond, negative, guidance_scale, guided=guided,
                            skip_layers=skip_layers, remove_pooled=remove_pooled, slg_layers=slg_layers,
                            slg_scale=slg_scale)
        z = flow_match_euler(net, latents, np.asarray(sigmas, np.float32), window if slg_layers else None)
        return self.decode(vae_variables, z)

    def _sample_and_decode(self, variables: Any, vae_variables: Any, key: Array, cond: dict[str, Any],
                           negative: dict[str, Any], guidance_scale: Array, *, sampler: tuple[tuple[str, Any], ...],
                           shape: tuple[int, ...], guided: bool, skip_layers: tuple[int, ...],
                           remove_pooled: bool) -> Array:
        """Any sampler of the core on the transformer's own schedule, from ``key``; then decoded."""
        net = self.velocity(self.family.prepare(variables), cond, negative, guidance_scale, guided=guided,
                            skip_layers=skip_layers, remove_pooled=remove_pooled)
        sample = make_sampler(dict(sampler), self.family.schedule, "velocity")
        return self.decode(vae_variables, sample(net, key, shape))

    # ---- prompts -> images ------------------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], steering: Steering | None = None) -> dict[str, Any]:
        """``{"context": (B, 77 + L_T5, d), "pooled": (B, d_pool)}`` (+ ``pooled_steering``)."""
        c, y = self.text.encode(list(prompts))
        cond: dict[str, Any] = {"context": c, "pooled": y}
        if steering is not None:
            plus, minus, weight = steering
            if not len(plus) == len(minus) == len(prompts):
                raise ConfigError(f"steering needs one positive and one negative prompt per prompt ({len(prompts)}), "
                                  f"got {len(plus)} and {len(minus)}")
            cond["pooled_steering"] = (self.text.encode(list(plus))[1], self.text.encode(list(minus))[1],
                                       jnp.full((len(prompts),), weight, jnp.float32))
        return cond

    def generate(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 28,
                 guidance_scale: float = 7.0, seed: int = 0, latents: Any = None, skip_layers: Sequence[int] = (),
                 remove_pooled: bool = False, steering: Steering | None = None,
                 skip_guidance_layers: Sequence[int] = (), skip_layer_guidance_scale: float = 2.8,
                 skip_layer_guidance_start: float = 0.01, skip_layer_guidance_stop: float = 0.2,
                 sampler: Mapping[str, Any] | None = None) -> Array:
        """Decoded images ``(N, H, W, 3)`` float32 (about [-1, 1], unclipped) for N prompts.

        ``latents``: the starting noise ``(N, H / f, W / f, C)`` NHWC (diffusers' NCHW latents transposed); else
        ``jax.random.normal(PRNGKey(seed))`` of that shape. ``steering = (positive prompts, negative prompts, w)``
        moves the pooled vector of both CFG branches. ``skip_guidance_layers`` and the ``skip_layer_guidance_*``
        arguments are diffusers' skip-layer guidance (module docstring).

        ``sampler``: instead of diffusers' FlowMatchEuler loop, any sampler of the core by config (e.g.
        ``{"name": "ode", "n_steps": 20, "method": "heun"}``; ``mmdit_jax.diffusion.samplers``) on the
        transformer's rectified-flow schedule with the scheduler's shift; it draws its starting noise from
        ``PRNGKey(seed)`` (so ``latents`` and ``num_inference_steps`` do not apply; the step count is the sampler's).
        """
        cond, negative, guided = self.conditioning(prompts, negative_prompts, guidance_scale, steering, remove_pooled)
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        self.check_size(height, width)
        check_positive_int("num_inference_steps", num_inference_steps)
        shape = self.latent_shape(cond["context"].shape[0], height, width)
        if sampler is not None:
            if latents is not None or tuple(skip_guidance_layers):
                raise ConfigError("sampler: a sampler of the core draws its own starting noise from the seed; latents "
                                  "and skip_guidance_layers apply to the default FlowMatchEuler loop only")
            spec = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(sampler).items()))
            make_sampler(dict(spec), self.family.schedule, "velocity")      # errors name the sampler's field
            return self._run_sampler(self.variables, self.vae_variables, jax.random.PRNGKey(seed), cond, negative,
                                     jnp.float32(guidance_scale), sampler=spec, shape=shape, guided=guided,
                                     skip_layers=tuple(int(i) for i in skip_layers),
                                     remove_pooled=bool(remove_pooled))
        latents = self.noise("latents", latents, shape, jax.random.PRNGKey(seed))
        slg_layers, window = self._skip_layer_guidance(skip_guidance_layers, num_inference_steps,
                                                       skip_layer_guidance_start, skip_layer_guidance_stop, guided)
        sigmas = tuple(float(s) for s in self.grid(num_inference_steps, shape[1], shape[2]))
        return self._run(self.variables, self.vae_variables, latents, cond, negative,
                         jnp.float32(guidance_scale), jnp.asarray(window), jnp.float32(skip_layer_guidance_scale),
                         sigmas=sigmas, guided=guided, skip_layers=tuple(int(i) for i in skip_layers),
                         remove_pooled=bool(remove_pooled), slg_layers=slg_layers)

    def __call__(self, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 28,
                 guidance_scale: float = 7.0, seed: int = 0, latents: Any = None, skip_layers: Sequence[int] = (),
                 remove_pooled: bool = False, steering: Steering | None = None,
                 skip_guidance_layers: Sequence[int] = (), skip_layer_guidance_scale: float = 2.8,
                 skip_layer_guidance_start: float = 0.01, skip_layer_guidance_stop: float = 0.2,
                 sampler: Mapping[str, Any] | None = None) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images (``generate``, then diffusers' postprocessing)."""
        return to_uint8(self.generate(
            prompts, negative_prompts, height, width, num_inference_steps, guidance_scale, seed, latents,
            skip_layers, remove_pooled, steering, skip_guidance_layers=skip_guidance_layers,
            skip_layer_guidance_scale=skip_layer_guidance_scale, skip_layer_guidance_start=skip_layer_guidance_start,
            skip_layer_guidance_stop=skip_layer_guidance_stop, sampler=sampler))
