"""FLUX.1 [dev] / [schnell] text-to-image from a local diffusers pipeline folder, equal to diffusers' ``FluxPipeline``.

    pipe = FluxPipeline.from_folder("/path/to/FLUX.1-dev")
    images = pipe(prompts, height=1024, width=1024, seed=0)                 (N, H, W, 3) uint8
    x = pipe.generate(prompts, height=..., width=..., latents=z)             (N, H, W, 3) float32, decoder output ~[-1, 1]

The steps, each as diffusers does them (no torch at run time):

* prompts -> ``context = T5(prompts).last_hidden_state (B, L, 4096)`` (``max_sequence_length`` tokens, padded, no
  mask) and ``pooled = CLIP-L pooler_output (B, 768)`` (the EOS state after the final norm, unprojected);
  the text ids are zeros ``(L, 3)``;
* latents ``z ~ N(0, I)`` of shape ``(B, H / f, W / f, C)`` NHWC (``f`` the VAE's downscale; H and W multiples of
  ``2 f`` for the 2x2 packing), or given; the family packs them into ``(B, H/2f * W/2f, 4C)`` tokens with ids
  ``(0, row, col)``;
* the grid ``flow_match_schedule(sigmas=linspace(1, 1/n, n), mu=calculate_shift(H/2f * W/2f))`` from
  ``scheduler_config.json`` (``mu`` unused without ``use_dynamic_shifting``, as in diffusers);
* Euler ``z <- z + (sigma_{i+1} - sigma_i) v``, ``v = Flux(z, t_i, context, pooled, guidance)`` with
  ``t_i = (1000 sigma_i) / 1000`` in float32 as diffusers hands it over; guidance-distilled transformers
  (``guidance_embeds``) embed ``guidance_scale``, others ignore it;
* optional true CFG (``true_cfg_scale > 1`` with ``negative_prompts``): ``v = v_n + s (v_c - v_n)``, both branches
  in one batched call;
* ``z / scaling_factor + shift_factor`` -> VAE decoder -> ``clip(x / 2 + 0.5, 0, 1)`` (uint8: ``round(255 u)``).

The loop and the decoder run as one compiled program per (batch, size, steps, options); the guidance scales are
traced, so changing them does not recompile. ``remove_pooled`` and pooled ``steering`` act on the conditioning
vector as in ``SD3Pipeline`` (the family implements them). ``kontext.FluxKontextPipeline`` reuses these parts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.diffusion.flow_match import (
    dynamic_mu,
    flow_match_euler,
    flow_match_schedule,
    flux_sigmas,
    scheduler_config,
)
from mmdit_jax.diffusion.guidance import classifier_free_guidance
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule
from mmdit_jax.families.flux import FluxFamily
from mmdit_jax.interop.vae import load_vae
from mmdit_jax.models.text.conditioning import Encoder
from mmdit_jax.models.text.tokenizers import PromptTokenizer
from mmdit_jax.models.vae import (
    AutoencoderKL,
    VAEConfig,
    denormalize_latents,
    normalize_latents,
)
from mmdit_jax.pipelines.text import encoder_from_folder
from mmdit_jax.pipelines.text_to_image import (
    CLIP_MAX_LENGTH,
    Steering,
    _components,
    _read_json,
    noise_or,
    to_uint8,
)

Array = jax.Array
Conditioning = tuple[dict[str, Any], dict[str, Any] | None, bool]     # (cond, negative or None, guided)

REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
MAX_SEQUENCE_LENGTH = 512        # diffusers' FluxPipeline refuses longer T5 prompts
DEFAULT_SAMPLE_SIZE = 128        # diffusers' default_sample_size: 128 latents (1024 pixels with the FLUX VAE)


@dataclasses.dataclass
class FluxTextEncoders:
    """CLIP-L (``CLIPTextModel``: only its pooled output is used) and T5 (its last hidden state)."""

    clip: Encoder
    t5: Encoder

    def encode(self, prompts: Sequence[str]) -> tuple[Array, Array]:
        """``(context: (B, L, d_T5), pooled: (B, d_CLIP))`` as diffusers' ``FluxPipeline.encode_prompt``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.t5(prompts)["last_hidden_state"], self.clip(prompts)["pooled"]


FLUX_LAYOUT = "diffusers' packed latents unpacked to NCHW, then transposed"


class FluxPipeline:
    """The transformer (as a ``FluxFamily``), VAE, text encoders and scheduler config of one pipeline folder."""

    def __init__(self, family: FluxFamily, variables: Any, vae_config: VAEConfig, vae_variables: Any,
                 text: FluxTextEncoders, scheduler: dict[str, Any]):
        self.family = family
        self.variables = jax.device_put(variables)
        self.vae_config = vae_config
        self.vae_variables = jax.device_put(vae_variables)
        self.text = text
        self.scheduler = scheduler
        self.vae = AutoencoderKL(vae_config)
        self._run = jax.jit(self._denoise_and_decode, static_argnames=("sigmas", "guided", "remove_pooled"))

    @classmethod
    def from_folder(cls, path: str | os.PathLike, dtype: str = "float32",
                    max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> "FluxPipeline":
        """Load a ``FluxPipeline.save_pretrained`` folder (FLUX.1-dev, -schnell, Kontext). ``dtype``: compute dtype
        of the transformer and the VAE (text encoders run in float32); ``max_sequence_length``: T5 tokens (diffusers'
        default 512; at most 512)."""
        folder = os.fspath(path)
        if not os.path.isdir(folder):
            raise ConfigError(f"FLUX pipeline folder {folder!r} does not exist (no downloads: point to local files)")
        check_positive_int("max_sequence_length", max_sequence_length)
        if max_sequence_length > MAX_SEQUENCE_LENGTH:
            raise ConfigError(f"max_sequence_length={max_sequence_length} must be at most {MAX_SEQUENCE_LENGTH} "
                              "(diffusers' FluxPipeline limit)")
        parts = _components(folder, REQUIRED, (), "FLUX")

        sched = scheduler_config(_read_json(os.path.join(parts["scheduler"], "scheduler_config.json"),
                                            "scheduler config"))
        flux_cfg, variables = FluxFamily.load_pretrained(parts["transformer"])
        flux_cfg = dataclasses.replace(flux_cfg, dtype=dtype)
        flux_cfg.validate()
        schedule = RectifiedFlowSchedule(shift=float(sched["shift"]),
                                         num_train_timesteps=int(sched["num_train_timesteps"]))
        # the model embeds 1000 t whatever num_train_timesteps is; the pipeline divides the timesteps by 1000
        family = FluxFamily(flux_cfg, schedule, timestep_scale=1000.0)

        vae_cfg, vae_variables = load_vae(parts["vae"])
        vae_cfg = dataclasses.replace(vae_cfg, dtype=dtype)
        vae_cfg.validate()
        if vae_cfg.latent_channels != flux_cfg.latent_channels:
            raise ConfigError(f"vae.latent_channels={vae_cfg.latent_channels} differs from the transformer's "
                              f"in_channels / 4 = {flux_cfg.latent_channels} (2x2 packing)")

        def encoder(enc: str, tok: str, kind: str, max_length: int) -> Encoder:
            return encoder_from_folder(parts[enc], PromptTokenizer(parts[tok], kind, max_length), kind, f"{enc}/")

        text = FluxTextEncoders(encoder("text_encoder", "tokenizer", "clip", CLIP_MAX_LENGTH),
                                encoder("text_encoder_2", "tokenizer_2", "t5", max_sequence_length))
        family.check_conditioning({"context": (text.t5.config.d_model,),
                                   "pooled": (text.clip.config.hidden_size,)})
        return cls(family, variables, vae_cfg, vae_variables, text, sched)

    # ---- sizes and the grid ------------------------------------------------------------------------------------

    @property
    def vae_scale_factor(self) -> int:
        return self.vae_config.downscale

    @property
    def size_multiple(self) -> int:
        """Height and width are multiples of this: the VAE's downscale x 2 (the 2x2 packing)."""
        return 2 * self.vae_scale_factor

    @property
    def default_size(self) -> int:
        """diffusers' default height and width: ``default_sample_size`` (128) x the VAE's downscale."""
        return DEFAULT_SAMPLE_SIZE * self.vae_scale_factor

    def check_size(self, height: int, width: int, names: tuple[str, str] = ("height", "width")) -> None:
        """Errors name ``height`` / ``width`` unless both are positive multiples of ``size_multiple``."""
        multiple = self.size_multiple
        for name, value in zip(names, (height, width)):
            check_positive_int(name, value)
            if value % multiple:
                raise ConfigError(f"{name}={value} must be divisible by {multiple} (the VAE's downscale "
                                  f"{self.vae_scale_factor} x 2 for FLUX's 2x2 packing); e.g. "
                                  f"{name}={max(multiple, value - value % multiple)}")

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return batch, height // f, width // f, self.family.config.latent_channels

    def schedule(self, num_inference_steps: int, latent_height: int, latent_width: int,
                 sigmas: Sequence[float] | None = None) -> tuple[np.ndarray, float]:
        """``(sigmas (n + 1,) float32, mu)`` as the pipeline's ``retrieve_timesteps`` sets them: the custom grid
        ``linspace(1, 1/n, n)`` (or ``sigmas``), ``mu = calculate_shift`` of the packed token count."""
        custom = flux_sigmas(num_inference_steps) if sigmas is None else np.asarray(sigmas, np.float64)
        mu = dynamic_mu(self.scheduler, (latent_height // 2) * (latent_width // 2))
        return flow_match_schedule(None, self.scheduler, sigmas=custom, mu=mu)[0], mu

    # ---- pieces shared with Kontext -----------------------------------------------------------------------------

    def encode(self, prompts: Sequence[str], steering: Steering | None = None) -> dict[str, Any]:
        """``{"context": (B, L, d_T5), "pooled": (B, d_CLIP)}`` (+ ``pooled_steering``)."""
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

    def conditioning(self, prompts: Sequence[str] | str, negative_prompts: Sequence[str] | None,
                     guidance_scale: float, true_cfg_scale: float, steering: Steering | None = None,
                     remove_pooled: bool = False) -> Conditioning:
        """``(cond, negative, guided)`` for N prompts. ``cond["guidance"] (N,)`` holds ``guidance_scale`` for a
        guidance-distilled transformer; ``guided`` (true CFG) is ``true_cfg_scale > 1`` with negative prompts."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ConfigError("prompts must hold at least one prompt")
        if steering is not None and remove_pooled:
            raise ConfigError("steering moves the pooled vector, which remove_pooled=True removes: use one of them")
        guided = true_cfg_scale > 1.0
        if guided and negative_prompts is None:
            # diffusers silently skips true CFG without a negative prompt
            raise ConfigError(f"true_cfg_scale={true_cfg_scale} > 1 needs negative_prompts (one per prompt); use "
                              "true_cfg_scale=1 for the guidance-distilled model alone")
        cond = self.encode(prompts, steering)
        negative = None
        if guided:
            negatives = [negative_prompts] if isinstance(negative_prompts, str) else list(negative_prompts)
            if len(negatives) != len(prompts):
                raise ConfigError(f"negative_prompts has {len(negatives)} entries for {len(prompts)} prompts")
            negative = self.encode(negatives)
            if "pooled_steering" in cond:       # the batch is [negative; cond]: steer both halves alike
                negative["pooled_steering"] = cond["pooled_steering"]
        if self.family.config.guidance_embeds:
            for c in (cond, negative):
                if c is not None:
                    c["guidance"] = jnp.full((len(prompts),), guidance_scale, jnp.float32)
        return cond, negative, guided

    def velocity(self, variables: Any, cond: dict[str, Any], negative: dict[str, Any] | None,
                 true_cfg_scale: Array, *, guided: bool, remove_pooled: bool) -> Callable[[Array, Array], Array]:
        """The (true-CFG guided) velocity ``net(x, t)`` of prepared ``variables`` at flow time ``t (B,)``."""
        family = self.family
        n_train = jnp.float32(self.scheduler["num_train_timesteps"])

        def at_diffusers_time(net: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
            # diffusers passes timesteps (sigma n_train, float32) / 1000, which the model multiplies by 1000
            return lambda x, t: net(x, (t * n_train) / jnp.float32(1000.0))

        if not guided:
            return at_diffusers_time(family.net(variables, cond, remove_pooled=remove_pooled))
        cfg = classifier_free_guidance(lambda v, x, t, c: family.net(v, c, remove_pooled=remove_pooled)(x, t),
                                       true_cfg_scale)
        return at_diffusers_time(lambda x, t: cfg(variables, x, t, (cond, negative)))

    def decode(self, vae_variables: Any, z: Array) -> Array:
        """Model latents ``(B, h, w, C)`` -> decoder output ``(B, f h, f w, 3)``: ``z / scaling_factor + shift``."""
        return self.vae.apply(vae_variables, denormalize_latents(z, self.vae_config), method="decode")

    def encode_images(self, vae_variables: Any, images: Array) -> Array:
        """Images ``(B, H, W, 3)`` in [-1, 1] -> model latents ``(mean - shift) * scale`` (the posterior mode,
        diffusers' ``retrieve_latents(sample_mode="argmax")``)."""
        mean, _ = self.vae.apply(vae_variables, images, method="encode")
        return normalize_latents(mean, self.vae_config)

    def denoise_and_decode(self, variables: Any, vae_variables: Any, latents: Array, cond: dict[str, Any],
                           negative: dict[str, Any] | None, true_cfg_scale: Array, sigmas: tuple[float, ...],
                           guided: bool, remove_pooled: bool) -> Array:
        """latents ``(B, h, w, C)`` -> decoded images ``(B, f h, f w, 3)`` float32 (traced: call under jit)."""
        net = self.velocity(self.family.prepare(variables), cond, negative, true_cfg_scale, guided=guided,
                            remove_pooled=remove_pooled)
        return self.decode(vae_variables, flow_match_euler(net, latents, np.asarray(sigmas, np.float32)))

    def _denoise_and_decode(self, variables: Any, vae_variables: Any, latents: Array, cond: dict[str, Any],
                            negative: dict[str, Any] | None, true_cfg_scale: Array, *, sigmas: tuple[float, ...],
                            guided: bool, remove_pooled: bool) -> Array:
        return self.denoise_and_decode(variables, vae_variables, latents, cond, negative, true_cfg_scale, sigmas,
                                       guided, remove_pooled)

    # ---- prompts -> images ------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str] | str, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, guidance_scale: float = 3.5, seed: int = 0, latents: Any = None, *,
                 negative_prompts: Sequence[str] | None = None, true_cfg_scale: float = 1.0,
                 sigmas: Sequence[float] | None = None, remove_pooled: bool = False,
                 steering: Steering | None = None) -> Array:
        """Decoded images ``(N, H, W, 3)`` float32 (about [-1, 1], unclipped) for N prompts.

        ``latents``: the starting noise ``(N, H / f, W / f, C)`` NHWC (diffusers' packed latents unpacked and
        transposed); else ``jax.random.normal(PRNGKey(seed))`` of that shape. ``guidance_scale``: the embedded
        guidance of a guidance-distilled transformer (dev; schnell ignores it, use 0 and 4 steps there).
        ``sigmas``: a custom grid ``(n,)`` before the shift (then ``num_inference_steps = n``).
        ``steering = (positive prompts, negative prompts, w)`` moves the pooled vector of both CFG branches.
        """
        cond, negative, guided = self.conditioning(prompts, negative_prompts, guidance_scale, true_cfg_scale,
                                                   steering, remove_pooled)
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        self.check_size(height, width)
        num_inference_steps = len(sigmas) if sigmas is not None else num_inference_steps
        check_positive_int("num_inference_steps", num_inference_steps)
        shape = self.latent_shape(cond["context"].shape[0], height, width)
        latents = noise_or("latents", latents, shape, jax.random.PRNGKey(seed), self.vae_scale_factor, FLUX_LAYOUT)
        grid, _ = self.schedule(num_inference_steps, shape[1], shape[2], sigmas)
        return self._run(self.variables, self.vae_variables, latents, cond, negative, jnp.float32(true_cfg_scale),
                         sigmas=tuple(float(s) for s in grid), guided=guided, remove_pooled=bool(remove_pooled))

    def __call__(self, prompts: Sequence[str] | str, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, guidance_scale: float = 3.5, seed: int = 0, latents: Any = None,
                 **options: Any) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images (``generate``, then diffusers' postprocessing)."""
        return to_uint8(self.generate(prompts, height, width, num_inference_steps, guidance_scale, seed, latents,
                                      **options))
