"""What a model family is: the one interface the trainer, the pipelines, evaluation and the studies talk to.

A family owns

* its config dataclass (``Config``): the single source of the ``model`` section's fields and defaults;
* ``init``: the variables of a fresh model (``params`` and any non-trained collections, e.g. ``buffers``);
* ``net``: the adapter from ``(variables, conditioning)`` to the ``net(x, t)`` of the score-based core, which
  is called with the schedule's own ``t`` (what the network actually sees, e.g. ``1000 t``, is decided here);
* ``forward_flops``: the matmul FLOPs of one forward pass;
* ``load_pretrained`` / ``export``: checkpoint converters, where the family has a released counterpart;
* ``lora_layout``: its parameters' diffusers module names, for LoRA files (``interop.lora``).

**Conditioning** is a named bundle, a ``dict[str, Array]`` whose entries all have the batch as leading axis.
The names in use:

=================  =====================  =============================================================
name               shape                  meaning
=================  =====================  =============================================================
``context``        (B, T, d_ctx)          text tokens (SD3: CLIP-L/G penultimate states and T5)
``pooled``         (B, d_pool)            pooled text vector (SD3: [CLIP-L; CLIP-G] projected)
``pooled_steering`` ((B, d), (B, d), (B,))  ``(pooled_plus, pooled_minus, w)``: y += w (h_y(p+) - h_y(p-))
``reference``      (B, h, w, C)           a clean image whose tokens join the image stream with their own
                                          positions (in-context editing; FLUX.1 Kontext); never noised
``concat``         (B, H, W, C)           an image concatenated to the noisy input's channels (InstructPix2Pix-
                                          style editing; needs ``model.in_channels`` for 2C)
``context_frames`` (B, T_c, H, W, C)      clean previous frames of a clip (frame-by-frame video generation):
                                          their tokens precede the noisy clip in time; never noised
=================  =====================  =============================================================

A family lists in ``conditioning`` the entries it needs; others are ignored. Because every entry is batched,
classifier-free guidance concatenates a bundle with its unconditional twin like any other pytree.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import jax

from mmdit_jax.checks import ConfigError, check_keys
from mmdit_jax.diffusion.schedules import Schedule

Array = jax.Array
Conditioning = Mapping[str, Any]
Net = Callable[[Array, Array], Array]


class Family:
    """Base class of a model family. Subclasses set ``name``, ``Config`` and implement ``init``, ``net`` and
    ``forward_flops``; everything else has a default.

    A family instance is built once per run from the validated ``model`` config section and the run's
    schedule: ``family = SomeFamily(config, schedule, timestep_scale, forward_mode)``. ``forward_mode`` is set
    when the loss differentiates the network's forward pass (``jax.jvp``), so a family can switch off
    hand-written reverse-mode gradients.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    # Entries of the conditioning bundle the model reads (``()``: unconditional).
    conditioning: tuple[str, ...] = ()
    # The text stack a training run builds for it (``mmdit_jax.components.text.TEXT_STACKS``).
    text_stack: ClassVar[str] = "sd3"

    def __init__(self, config: Any, schedule: Schedule, timestep_scale: float = 1.0, forward_mode: bool = False):
        self.config = config
        self.schedule = schedule
        self.timestep_scale = float(timestep_scale)
        self.forward_mode = forward_mode

    # ---- config -------------------------------------------------------------------------------------

    @classmethod
    def config_from_dict(cls, fields: Mapping[str, Any]) -> Any:
        """The ``model`` section (without ``name``) as ``Config``, every field checked; unknown keys are typos."""
        fields = dict(fields)
        check_keys(f"model ({cls.name})", fields, {f.name for f in dataclasses.fields(cls.Config)})
        config = cls.Config(**fields)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
        return config

    def check_data(self, data_shape: tuple[int, ...]) -> None:
        """Raise ConfigError if the model cannot take examples of ``data_shape`` (no batch axis)."""

    def check_conditioning(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Raise ConfigError if the conditioning the run provides (``{entry: shape}``, batch axis first) does not
        fit the model, e.g. text encoders whose width differs from the model's."""

    # ---- the model ----------------------------------------------------------------------------------

    def init(self, key: Array, x: Array, cond: Conditioning) -> dict[str, Any]:
        """Variables of a fresh model for example inputs ``x: (B, *data_shape)`` and ``cond``."""
        raise NotImplementedError

    def prepare(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """The variables a compiled program computes with (e.g. kernels cast to the compute dtype once, outside
        any scan); called inside the program, so gradients reach the stored parameters. Default: unchanged."""
        return dict(variables)

    def net(self, variables: Mapping[str, Any], cond: Conditioning, **options: Any) -> Net:
        """``net(x: (B, ...), t: (B,)) -> (B, ...)`` in the run's parameterisation. ``options`` are the family's
        inference switches (e.g. ``remove_pooled``); an unknown one raises ConfigError."""
        raise NotImplementedError

    def non_trainable(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """The collections other than ``params`` (rebuilt by ``init``, never stored in a checkpoint)."""
        return {k: v for k, v in variables.items() if k != "params"}

    def forward_flops(self, batch: int, data_shape: tuple[int, ...], cond_shapes: Mapping[str, tuple]) -> int:
        """Matmul FLOPs (multiply-add = 2) of one forward pass on ``batch`` examples."""
        raise NotImplementedError

    # ---- checkpoints of released models -------------------------------------------------------------

    @classmethod
    def load_pretrained(cls, source: Any, **overrides: Any) -> tuple[Any, dict[str, Any]]:
        """``(Config, variables)`` from a released checkpoint (folder, file or state dict)."""
        raise ConfigError(f"model family {cls.name!r} has no checkpoint converter")

    def export(self, variables: Mapping[str, Any], layout: str = "diffusers") -> dict[str, Any]:
        """The variables as a released model's state dict (numpy arrays) in ``layout``."""
        raise ConfigError(f"model family {self.name!r} has no checkpoint converter")

    @classmethod
    def lora_layout(cls) -> Any:
        """How the parameters map to diffusers' module names for LoRA files (``interop.lora.LoraLayout``), or None
        where the family has no diffusers LoRA format."""
        return None

    # ---- helpers for subclasses ---------------------------------------------------------------------

    def _check_options(self, options: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"model family {self.name!r} has no inference options {unknown}; valid: {list(allowed)}")

    def _require(self, cond: Conditioning, *names: str) -> None:
        missing = [n for n in names if cond.get(n) is None]
        if missing:
            raise ConfigError(f"model family {self.name!r} needs conditioning entries {missing}; got {sorted(cond)}")
