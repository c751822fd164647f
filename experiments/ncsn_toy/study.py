"""The NCSN 2D study as functions: exact-score samplers, a DSM-trained MLP, metrics over seeds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.data.toy2d import NCSN_MIXTURE
from mmdit_jax.diffusion.losses import make_loss_fn
from mmdit_jax.diffusion.parameterization import as_parameterization
from mmdit_jax.diffusion.samplers import annealed_langevin, langevin
from mmdit_jax.diffusion.schedules import NCSNSchedule, get_schedule
from mmdit_jax.eval.sample_metrics import mmd2_unbiased
from mmdit_jax.families.mlp import mlp_net
from mmdit_jax.models.mlp import NoiseConditionalMLP
from mmdit_jax.train.fit import fit

Array = jax.Array


def train_score_model(config: Any) -> tuple[NoiseConditionalMLP, Any, NCSNSchedule, Array]:
    """Train the noise-conditional MLP by the configured loss on mixture samples; returns (module, params, schedule, losses)."""
    schedule = get_schedule(config.schedule)
    module = NoiseConditionalMLP(hidden=config.model.hidden, depth=config.model.depth)
    key_init, key_fit = jax.random.split(jax.random.PRNGKey(config.seed))
    params = module.init(key_init, jnp.zeros((1, 2)), jnp.zeros((1,)))
    loss_fn = make_loss_fn(config.train.loss, schedule, "eps")

    def loss(p, x, k):
        return jnp.mean(loss_fn(mlp_net(module, p, schedule, config.model.sigma_data), x, k)[0])

    params, losses = fit(loss, params, NCSN_MIXTURE.sample, key_fit, config.train.n_steps,
                         config.train.learning_rate, config.train.batch_size, cosine_decay=True)
    return module, params, schedule, losses


def learned_score_fn(module, params, schedule: NCSNSchedule, sigma_data: float):
    """``score_fn(x, sigma)`` of the trained model at a level of the schedule's ladder."""
    score = as_parameterization(mlp_net(module, params, schedule, sigma_data), schedule, "eps", "score")
    return lambda x, sigma: score(x, jnp.full(x.shape[:1], schedule.t_from_ve_sigma(sigma)))


def run_samplers(config: Any, learned_score, key: Array) -> dict[str, Array]:
    """One seed of every panel: iid, plain Langevin (exact), annealed (exact repo scores), annealed (learned)."""
    schedule = get_schedule(config.schedule)
    keys = jax.random.split(key, 5)
    box = config.init_box
    x_init = jax.random.uniform(keys[0], (config.n_samples, 2), minval=-box, maxval=box)
    ald = dict(n_steps_each=config.annealed.n_steps_each, step_size=config.annealed.step_size,
               denoise=config.annealed.denoise)
    return {
        "iid": NCSN_MIXTURE.sample(keys[1], config.n_samples),
        "plain_exact": langevin(lambda x, _: NCSN_MIXTURE.score(x), x_init, config.plain.n_steps,
                                config.plain.step_size, keys[2]),
        "annealed_exact": annealed_langevin(NCSN_MIXTURE.ncsn_repo_score, x_init, schedule.sigmas, key=keys[3], **ald),
        "annealed_learned": annealed_langevin(learned_score, x_init, schedule.sigmas, key=keys[4], **ald),
    }


def evaluate(config: Any, learned_score) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, Array]]:
    """Mode weight of (5, 5) and MMD^2 against a fresh iid sample, mean and std over ``n_seeds`` seeds."""
    run = jax.jit(lambda k: run_samplers(config, learned_score, k))
    per_seed: dict[str, dict[str, list[float]]] = {}
    first = None
    for seed in range(config.n_seeds):
        key = jax.random.PRNGKey(1000 + seed)
        panels = run(key)
        first = first or panels
        reference = NCSN_MIXTURE.sample(jax.random.fold_in(key, 7), config.n_samples)
        for name, x in panels.items():
            stats = per_seed.setdefault(name, {"weight": [], "mmd2": []})
            stats["weight"].append(float(NCSN_MIXTURE.mode_weights(x)[0]))
            stats["mmd2"].append(float(mmd2_unbiased(x, reference, config.mmd_bandwidth)))
    summary = {name: {m: (float(np.mean(v)), float(np.std(v))) for m, v in stats.items()}
               for name, stats in per_seed.items()}
    return summary, first
