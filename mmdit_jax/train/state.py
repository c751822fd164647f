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


def learning_rate_schedule(cfg: Any, num_steps: int) -> optax.Schedule:
    """``step -> learning rate``: linear warmup from 0 over ``warmup_steps``, then cosine decay to
    ``final_lr_fraction * learning_rate`` at ``num_steps`` (``schedule='cosine'``) or constant."""
    check_positive("optim.learning_rate", cfg.learning_rate)
    check_choice("optim.schedule", cfg.schedule, ("cosine", "constant"))
    warmup = min(int(cfg.warmup_steps), max(num_steps - 1, 1))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(num_steps, warmup + 1),
                                                  end_value=cfg.learning_rate * cfg.final_lr_fraction)
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup),
                                 optax.constant_schedule(cfg.learning_rate)], [warmup])


def make_optimizer(cfg: Any, num_steps: int) -> optax.GradientTransformation:
    """AdamW on ``learning_rate_schedule``, after global-norm gradient clipping (``grad_clip > 0``)."""
    chain = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    chain.append(optax.adamw(learning_rate_schedule(cfg, num_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay))
    return optax.chain(*chain)


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params), opt_state=optimizer.init(params))
