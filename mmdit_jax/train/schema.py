"""The experiment config's sections and their start-up validation: unknown keys (typos) and invalid values are
rejected with the field name and the valid choices, before any data is generated or any model compiled.

Sections chosen by name validate through their registry: ``model`` (``mmdit_jax.families``), ``data``
(``mmdit_jax.data.registry``), ``schedule``, ``loss`` and ``sample.sampler`` (``mmdit_jax.diffusion``).
``text`` is needed only when the run conditions on text (a captioned data set and a family that reads text);
``latent`` only for latent training (``mmdit_jax.components.codec``); ``finetune`` only to start from a trained
run, fully or with LoRA (``mmdit_jax.adapters.finetune``); ``dreambooth`` to personalise such a fine-tune
(``mmdit_jax.train.dreambooth``); ``edit`` and ``video`` are the sections of the editing and video training
tasks (``mmdit_jax.setup.tasks``), which check them and their fit with the rest of the run.

It lives in ``train/``, the lowest layer that knows every section (the optimizer and DreamBooth checks are
training's), so that ``train.loop.train`` validates its own config; ``mmdit_jax.config_schema`` re-exports it.
"""

from __future__ import annotations

from typing import Any

from mmdit_jax.checks import (
    ConfigError,
    check_choice,
    check_finite_values,
    check_keys,
    check_number,
    check_positive,
    check_positive_int,
)

SCHEMA: dict[str, set[str] | None] = {
    "seed": None, "model_parameterization": None, "timestep_scale": None,
    "data": None,         # validated by its data set's registry entry
    "text": {"clip_l", "clip_g", "t5", "joint_dim", "drop_probs"},
    "model": None,        # validated by its family's config dataclass
    "schedule": None,     # validated by get_schedule
    "loss": {"name"},
    "optim": {"learning_rate", "warmup_steps", "schedule", "final_lr_fraction", "b1", "b2", "eps", "weight_decay",
              "grad_clip"},
    "train": {"num_steps", "log_every", "checkpoint_every", "sample_every", "keep_checkpoints",
              "async_checkpointing", "ema_decay", "loss_buckets"},
    "mesh": {"data", "fsdp"},
    "sample": {"sampler", "guidance_scale", "negative", "prompts", "per_prompt", "seed", "remove_pooled", "steering"},
    "eval": {"num_examples"},
    "latent": {"vae", "batch_size"},
    "finetune": None,     # validated by mmdit_jax.adapters.finetune
    "dreambooth": None,   # validated by mmdit_jax.train.dreambooth
}                         # and every training task's section (``edit``, ``video``): validated by its task
OPTIONAL = {"text", "latent", "finetune", "dreambooth"}


def validate_config(config: Any) -> None:
    """Raise ``ConfigError`` naming the first invalid field of an experiment config."""
    # imported here: importing this module (and config_schema) stays cheap; the registries pull in the model stack
    from mmdit_jax.adapters.finetune import validate_finetune_config
    from mmdit_jax.train.dreambooth import validate_dreambooth_config
    from mmdit_jax.data.registry import validate_data_config
    from mmdit_jax.diffusion.losses import LOSSES, make_loss_fn
    from mmdit_jax.diffusion.parameterization import PARAMETERIZATIONS
    from mmdit_jax.diffusion.samplers import make_sampler
    from mmdit_jax.diffusion.schedules import get_schedule
    from mmdit_jax.components.from_config import data_shape, family_from_config, uses_text
    from mmdit_jax.components.codec import validate_latent_config
    from mmdit_jax.setup.tasks import TRAINING_TASKS, validate_task
    from mmdit_jax.train.state import learning_rate_schedule

    check_finite_values("", config)   # no field means NaN or inf, and NaN passes every range check below
    check_keys("config", config.keys(), {**SCHEMA, **{t.section: None for t in TRAINING_TASKS.values() if t.section}})
    missing = sorted(set(SCHEMA) - OPTIONAL - set(config.keys()))
    if missing:
        raise ConfigError(f"config is missing sections {missing}")
    for section, keys in SCHEMA.items():
        if keys is not None and section in config:
            check_keys(section, config[section].keys(), keys)
    spec = validate_data_config(config.data)
    validate_latent_config(config)
    check_choice("model_parameterization", config.model_parameterization, PARAMETERIZATIONS)
    check_choice("loss.name", config.loss.name, LOSSES)
    check_positive("timestep_scale", config.timestep_scale)
    schedule = get_schedule(config.schedule)
    make_loss_fn(config.loss.name, schedule, config.model_parameterization)
    family = family_from_config(config)
    text = uses_text(family, spec)
    family.check_data(data_shape(config))
    if text and "text" not in config:
        raise ConfigError(f"model.name={family.name!r} on captioned data needs a text section (configs/text.py)")
    make_sampler(config.sample.sampler, schedule, config.model_parameterization)
    learning_rate_schedule(config.optim, config.train.num_steps)
    for f in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "loss_buckets"):
        check_positive_int(f"train.{f}", config.train[f])
    if not 0.0 <= config.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
    check_positive_int("sample.per_prompt", config.sample.per_prompt)
    check_number("sample.guidance_scale", config.sample.guidance_scale, 0.0)
    check_choice("sample.negative", config.sample.negative, ("null", "empty_prompt"))
    check_keys("sample.steering", config.sample.steering.keys(), ("positive", "negative", "weight"))
    steer = config.sample.steering
    if steer.weight != 0.0:
        if not (steer.positive and steer.negative):
            raise ConfigError("sample.steering.weight != 0 needs both sample.steering.positive and .negative prompts")
        if "pooled" not in family.conditioning or config.sample.remove_pooled:
            raise ConfigError("sample.steering needs the pooled path: a family that reads the pooled vector "
                              "(model.use_pooled=True for sd3) and sample.remove_pooled=False")
    if text and config.text.drop_probs:
        for i, p in enumerate(config.text.drop_probs):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"text.drop_probs[{i}] must be in [0, 1], got {p}")
    for axis in ("data", "fsdp"):
        if config.mesh[axis] != -1:
            check_positive_int(f"mesh.{axis}", config.mesh[axis])
    task = validate_task(config)
    validate_finetune_config(config, task.base_model(dict(config.model)))
    validate_dreambooth_config(config)


__all__ = ["OPTIONAL", "SCHEMA", "validate_config"]
