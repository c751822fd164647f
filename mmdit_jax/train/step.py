"""The jit-compiled train step: a loss of the score-based core on any model family, conditioning dropout, AdamW, EMA.

    key_s   = fold_in(key, step)                       (deterministic: a resumed run draws the same noise)
    cond    = drop(key_s, cond)                        (text runs: independent per-encoder dropout, for CFG)
    cond    = text(trained_text, tokens)               (only when the CLIP towers are trained too)
    params  = compose(frozen, trained)                 (fine-tuning with LoRA: W + s A B; else the trained tree)
    net     = family.net(prepare(params), cond)        (the score-based core's net(x, t))
    loss    = mean_b w_b loss_fn(net, x0, key_s)       (any loss / schedule / parameterisation by name; w_b = 1
                                                        unless the batch carries ``loss_weight``)
    trained = AdamW(clip(grad_trained))                (only the trained tree has gradients and optimizer state)
    ema     = decay * ema + (1 - decay) * trained

Metrics: loss, loss per noise-level bucket (t in [0, t_max] split in ``num_buckets``), gradient norm, lr.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mmdit_jax.diffusion.losses import make_loss_fn
from mmdit_jax.families import Family
from mmdit_jax.train.state import TrainState

Array = jax.Array
Batch = dict[str, Any]      # {"x": (B, *data_shape), "cond": {entry: (B, ...)}, optional "loss_weight": (B,)}
Dropout = Callable[[Array, dict[str, Array]], dict[str, Array]]


def bucket_losses(per_example: Array, t: Array, t_max: float, num_buckets: int) -> tuple[Array, Array]:
    """Sum and count of per-example losses in equal-width buckets of ``t / t_max``: ``(num_buckets,)`` each."""
    idx = jnp.clip((t / t_max * num_buckets).astype(jnp.int32), 0, num_buckets - 1)
    one_hot = jax.nn.one_hot(idx, num_buckets)
    return one_hot.T @ per_example, one_hot.sum(0)


def make_train_step(family: Family, non_trainable: dict[str, Any], optimizer: optax.GradientTransformation,
                    config: Any, lr_fn: Callable[[Array], Array], dropout: Dropout | None = None,
                    compose: Callable[[Any, Any], Any] | None = None,
                    text_encode: Callable[[Any, Any, Array], tuple[Array, Array]] | None = None,
                    view: Callable[[Array, Array, dict], tuple[Array, dict]] | None = None):
    """``train_step(state, batch, key, frozen=None) -> (state, metrics)``; ``non_trainable`` are the family's other
    collections (e.g. the MMDiT's position table), ``dropout`` the conditioning dropout (None: none),
    ``compose(frozen, trained) -> params`` how the trained tree makes the model's params (None: it is them).
    ``text_encode(clip_params, tokens, context) -> (context, pooled)``: the text encoders are trained too; the
    state's trained tree is then ``{"model": ..., "text": clip_params}`` and batches carry ``tokens``.
    ``view(key, x, cond) -> (x, cond)``: what the model is trained on of each batch (a video run's random window
    of context and target frames, ``setup.video``); None: the batch as it is."""
    loss_fn = make_loss_fn(config.loss.name, family.schedule, config.model_parameterization)
    decay = config.train.ema_decay
    num_buckets = config.train.loss_buckets
    t_max = float(family.schedule.timesteps(1)[0])

    def step(state: TrainState, batch: Batch, key: Array, frozen: Any = None) -> tuple[TrainState, dict[str, Array]]:
        key = jax.random.fold_in(key, state.step)
        key_drop, key_loss = jax.random.split(key)

        x, batch_cond = batch["x"], batch["cond"]
        if view is not None:
            x, batch_cond = view(jax.random.fold_in(key_drop, 1), x, batch_cond)

        def objective(trained):
            cond = batch_cond
            if text_encode is not None:
                trained, clip_params = trained["model"], trained["text"]
                context, pooled = text_encode(clip_params, batch["tokens"], cond["context"])
                cond = {**cond, "context": context, "pooled": pooled}
            if dropout is not None:
                cond = dropout(key_drop, cond)
            params = trained if compose is None else compose(frozen, trained)
            variables = family.prepare({"params": params, **non_trainable})   # once, outside any scan
            per, t = loss_fn(family.net(variables, cond), x, key_loss)
            weight = batch.get("loss_weight")           # per-example weights (prior preservation), else 1
            return jnp.mean(per if weight is None else weight * per), (per, t)

        (loss, (per, t)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        sums, counts = bucket_losses(per, t, t_max, num_buckets)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr_fn(state.step),
                   "bucket_loss_sum": sums, "bucket_count": counts}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    return step
