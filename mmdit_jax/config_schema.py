"""Validate an experiment config once, at start-up: unknown keys (typos) and invalid values are rejected with
the field name and the valid choices, before any data is generated or any model compiled."""

from __future__ import annotations

import dataclasses
from typing import Any

from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_positive, check_positive_int

SCHEMA: dict[str, set[str] | None] = {
    "seed": None, "model_parameterization": None, "timestep_scale": None,
    "data": {"name", "image_size", "num_train", "num_test", "max_objects", "seed", "tfds_name", "data_dir",
             "batch_size", "num_workers"},
    "text": {"clip_l", "clip_g", "t5", "joint_dim", "drop_probs"},
    "model": None,        # validated by MMDiTConfig.from_dict
    "schedule": None,     # validated by get_schedule
    "loss": {"name"},
    "optim": {"learning_rate", "warmup_steps", "schedule", "final_lr_fraction", "b1", "b2", "eps", "weight_decay",
              "grad_clip"},
    "train": {"num_steps", "log_every", "checkpoint_every", "sample_every", "keep_checkpoints",
              "async_checkpointing", "ema_decay", "loss_buckets"},
    "mesh": {"data", "fsdp"},
    "sample": {"sampler", "guidance_scale", "negative", "prompts", "per_prompt", "seed", "remove_pooled", "steering"},
    "eval": {"num_examples"},
}


def model_config(config: Any) -> Any:
    """``config.model`` as an ``MMDiTConfig`` for the configured loss. ``loss.name='ssm'`` differentiates the model
    forward (``jax.jvp``), which hand-written (reverse-mode) gradients do not support, nor does cuDNN's fused
    attention (also a ``custom_vjp``): there ``custom_gradients=None`` becomes False, ``attention_impl=None``
    becomes 'xla' where it would pick cuDNN (a GPU in bf16 / fp16), and an explicit ``custom_gradients=True`` or
    ``attention_impl`` 'einsum_vjp' / 'cudnn' is rejected."""
    from mmdit_jax.models.layers import attention_backend
    from mmdit_jax.models.mmdit import MMDiTConfig

    model = MMDiTConfig.from_dict(config.model)
    if config.loss.name != "ssm":
        return model
    if model.custom_gradients or model.attention_impl in ("einsum_vjp", "cudnn"):
        raise ConfigError("loss.name='ssm' differentiates the model forward (jax.jvp), which hand-written "
                          "gradients and cuDNN attention do not support: set model.custom_gradients to None or "
                          f"False (got {model.custom_gradients!r}) and model.attention_impl to None, 'einsum' or "
                          f"'xla' (got {model.attention_impl!r})")
    impl = model.attention_impl
    if impl is None and attention_backend(None, model.dtype, model.head_dim) == "cudnn":
        impl = "xla"
    return dataclasses.replace(model, custom_gradients=False, attention_impl=impl)


def validate_config(config: Any) -> None:
    from mmdit_jax.data.pipeline import DATASETS
    from mmdit_jax.diffusion.losses import LOSSES
    from mmdit_jax.diffusion.parameterization import PARAMETERIZATIONS
    from mmdit_jax.diffusion.samplers import make_sampler
    from mmdit_jax.diffusion.schedules import get_schedule

    check_keys("config", config.keys(), SCHEMA)
    missing = sorted(set(SCHEMA) - set(config.keys()))
    if missing:
        raise ConfigError(f"config is missing sections {missing}")
    for section, keys in SCHEMA.items():
        if keys is not None:
            check_keys(section, config[section].keys(), keys)
    check_choice("data.name", config.data.name, DATASETS)
    if config.data.name == "tfds" and not config.data.tfds_name:
        raise ConfigError("data.name='tfds' needs data.tfds_name (a TFDS dataset prepared locally)")
    for f in ("image_size", "num_train", "num_test", "batch_size", "max_objects"):
        check_positive_int(f"data.{f}", config.data[f])
    check_choice("model_parameterization", config.model_parameterization, PARAMETERIZATIONS)
    check_choice("loss.name", config.loss.name, LOSSES)
    check_positive("timestep_scale", config.timestep_scale)
    schedule = get_schedule(config.schedule)
    model = model_config(config)
    if model.in_channels != 3 or model.out_channels != 3:
        raise ConfigError(f"model.in_channels/out_channels must be 3 for RGB image data, got "
                          f"{model.in_channels}/{model.out_channels}")
    make_sampler(config.sample.sampler, schedule, config.model_parameterization)
    for f in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "loss_buckets"):
        check_positive_int(f"train.{f}", config.train[f])
    if not 0.0 <= config.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {config.train.ema_decay}")
    check_positive_int("sample.per_prompt", config.sample.per_prompt)
    check_choice("sample.negative", config.sample.negative, ("null", "empty_prompt"))
    check_keys("sample.steering", config.sample.steering.keys(), ("positive", "negative", "weight"))
    steer = config.sample.steering
    if steer.weight != 0.0:
        if not (steer.positive and steer.negative):
            raise ConfigError("sample.steering.weight != 0 needs both sample.steering.positive and .negative prompts")
        if not model.use_pooled or config.sample.remove_pooled:
            raise ConfigError("sample.steering needs the pooled path: model.use_pooled=True, sample.remove_pooled=False")
    for axis in ("data", "fsdp"):
        if config.mesh[axis] != -1:
            check_positive_int(f"mesh.{axis}", config.mesh[axis])
