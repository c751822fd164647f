"""The jit-compiled train step: loss of the score-based core on the MMDiT, encoder dropout, AdamW, EMA.

    key_s   = fold_in(key, step)                       (deterministic: a resumed run draws the same noise)
    c, y    = drop_encoders(key_s, c, y, ...)          (independent per-encoder dropout for CFG)
    loss    = mean_b loss_fn(net_params, x0, key_s)    (any loss / schedule / parameterisation by name)
    params  = AdamW(clip(grad))
    ema     = decay * ema + (1 - decay) * params

Metrics: loss, loss per noise-level bucket (t in [0, t_max] split in ``num_buckets``), gradient norm, lr.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mmdit_jax.diffusion.losses import make_loss_fn
from mmdit_jax.diffusion.schedules import Schedule
from mmdit_jax.models.mmdit import MMDiT
from mmdit_jax.models.mmdit_params import cast_kernels
from mmdit_jax.models.text.conditioning import drop_encoders
from mmdit_jax.train.state import TrainState

Array = jax.Array


def mmdit_net(model: MMDiT, variables: Any, context: Array, pooled: Array | None,
              timestep_scale: float) -> Callable[[Array, Array], Array]:
    """``net(x, t)`` of the score-based core: the MMDiT sees ``timestep_scale * t`` (SD3: 1000 t)."""
    return lambda x, t: model.apply(variables, x, timestep_scale * t, context, pooled)


def bucket_losses(per_example: Array, t: Array, t_max: float, num_buckets: int) -> tuple[Array, Array]:
    """Sum and count of per-example losses in equal-width buckets of ``t / t_max``: ``(num_buckets,)`` each."""
    idx = jnp.clip((t / t_max * num_buckets).astype(jnp.int32), 0, num_buckets - 1)
    one_hot = jax.nn.one_hot(idx, num_buckets)
    return one_hot.T @ per_example, one_hot.sum(0)


def make_train_step(model: MMDiT, buffers: Any, schedule: Schedule, optimizer: optax.GradientTransformation,
                    config: Any, lr_fn: Callable[[Array], Array], text_widths: tuple[int, int], clip_tokens: int):
    """``train_step(state, batch, key) -> (state, metrics)``; ``batch`` has image, context, pooled."""
    loss_fn = make_loss_fn(config.loss.name, schedule, config.model_parameterization)
    decay = config.train.ema_decay
    num_buckets = config.train.loss_buckets
    t_max = float(schedule.timesteps(1)[0])

    def step(state: TrainState, batch: dict[str, Array], key: Array) -> tuple[TrainState, dict[str, Array]]:
        key = jax.random.fold_in(key, state.step)
        key_drop, key_loss = jax.random.split(key)
        c, y = batch["context"], batch.get("pooled")
        if config.text.drop_probs and y is not None:
            c, y = drop_encoders(key_drop, c, y, text_widths, clip_tokens, tuple(config.text.drop_probs))

        def objective(params):
            variables = {"params": cast_kernels(params, model.config.dtype), **buffers}  # once, outside any scan
            net = mmdit_net(model, variables, c, y if model.config.use_pooled else None, config.timestep_scale)
            per, t = loss_fn(net, batch["image"], key_loss)
            return jnp.mean(per), (per, t)

        (loss, (per, t)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        sums, counts = bucket_losses(per, t, t_max, num_buckets)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr_fn(state.step),
                   "bucket_loss_sum": sums, "bucket_count": counts}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    return step
