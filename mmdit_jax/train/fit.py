"""Fit small models with data drawn inside the compiled loop: ``n_steps`` of Adam in one ``lax.scan``."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mmdit_jax.checks import check_positive, check_positive_int

Array = jax.Array


def fit(
    loss_fn: Callable[[Any, Array, Array], Array],
    params: Any,
    sample_batch: Callable[[Array, int], Array],
    key: Array,
    n_steps: int,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    cosine_decay: bool = False,
) -> tuple[Any, Array]:
    """Minimise ``loss_fn(params, x, key)`` on batches ``sample_batch(key, batch_size)``.

    With ``cosine_decay`` the learning rate decays to 0 over ``n_steps`` (averages out gradient noise, which
    dominates DSM at small noise levels). Returns the final parameters and every step's loss ``(n_steps,)``.
    """
    check_positive_int("n_steps", n_steps)
    check_positive_int("batch_size", batch_size)
    check_positive("learning_rate", learning_rate)
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, n_steps) if cosine_decay else learning_rate)

    @jax.jit
    def run(params, key):
        def step(carry, i):
            params, opt_state = carry
            k_data, k_loss = jax.random.split(jax.random.fold_in(key, i))
            loss, grads = jax.value_and_grad(loss_fn)(params, sample_batch(k_data, batch_size), k_loss)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(n_steps))
        return params, losses

    return run(params, key)
