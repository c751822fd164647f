"""Train state (params, EMA params, optimizer state, step) and the optimizer built from config."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mmdit_jax.checks import check_choice, check_positive


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def make_optimizer(cfg: Any, num_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine (or constant) decay, after global-norm gradient clipping."""
    check_positive("optim.learning_rate", cfg.learning_rate)
    check_choice("optim.schedule", cfg.schedule, ("cosine", "constant"))
    warmup = min(int(cfg.warmup_steps), max(num_steps - 1, 1))
    if cfg.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(num_steps, warmup + 1),
                                                end_value=cfg.learning_rate * cfg.final_lr_fraction)
    else:
        lr = optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup),
                                   optax.constant_schedule(cfg.learning_rate)], [warmup])
    chain = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    chain.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    return optax.chain(*chain)


def learning_rate(cfg: Any, num_steps: int, step: jax.Array) -> jax.Array:
    """The scheduled learning rate at ``step`` (for logging)."""
    warmup = min(int(cfg.warmup_steps), max(num_steps - 1, 1))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(num_steps, warmup + 1),
                                                  end_value=cfg.learning_rate * cfg.final_lr_fraction)(step)
    return jnp.where(step < warmup, cfg.learning_rate * step / max(warmup, 1), cfg.learning_rate)


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params), opt_state=optimizer.init(params))
