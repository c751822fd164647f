"""Predictor-corrector sampling of the reverse SDE (Song et al. 2021, Algorithm 1 of App. G).

For ``i = 0 .. n-1`` on the grid ``t_0 > ... > t_n`` of the schedule:

* corrector (Langevin, Alg. 4): ``g = s(x, t_i)``, ``a = 2 (snr ||z|| / ||g||)^2`` (per-example L2 norms averaged
  over the batch; under ``jit`` with a sharded batch the mean is a global reduction, no pmap collective),
  ``x <- x + a g + sqrt(2 a) z``, repeated ``n_corrector`` times;
* predictor (reverse diffusion, Eq. 46) with the exact forward transition ``t_{i+1} -> t_i`` of the path,
  ``x_{t_i} = F x_{t_{i+1}} + G z``, ``F = alpha_i / alpha_{i+1}``, ``G^2 = sigma_i^2 - F^2 sigma_{i+1}^2``:
  ``x_mean = x - (F - 1) x + G^2 s(x, t_i)``, ``x = x_mean + G z``.

With ``denoise=True`` the last predictor's mean is returned (the noise-free final step of score_sde).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.parameterization import Net, as_parameterization
from mmdit_jax.diffusion.schedules import Schedule

Array = jax.Array


def _mean_norm(u: Array) -> Array:
    return jnp.mean(jnp.linalg.norm(u.reshape(u.shape[0], -1), axis=-1))


def predictor_corrector(
    net: Net,
    schedule: Schedule,
    parameterization: str,
    x: Array,
    key: Array,
    n_steps: int,
    snr: float = 0.16,
    n_corrector: int = 1,
    denoise: bool = True,
) -> Array:
    """Reverse-diffusion predictor + Langevin corrector from ``x = x_{t_0}``; returns ``(B, ...)``."""
    score = as_parameterization(net, schedule, parameterization, "score")
    ts = schedule.timesteps(n_steps)
    batch = x.shape[0]

    def step(carry, i):
        x, _ = carry
        t_hi, t_lo = ts[i], ts[i + 1]
        t_vec = jnp.full((batch,), t_hi)
        key_i = jax.random.fold_in(key, i)

        def corrector(j, x):
            g = score(x, t_vec)
            z = jax.random.normal(jax.random.fold_in(key_i, j + 1), x.shape, x.dtype)
            a = 2.0 * (snr * _mean_norm(z) / _mean_norm(g)) ** 2
            return x + a * g + jnp.sqrt(2.0 * a) * z

        x = jax.lax.fori_loop(0, n_corrector, corrector, x)
        (a_hi, s_hi), (a_lo, s_lo) = schedule.marginal(t_hi), schedule.marginal(t_lo)
        f = a_hi / a_lo
        g2 = jnp.maximum(s_hi**2 - f**2 * s_lo**2, 0.0)
        x_mean = x - (f - 1.0) * x + g2 * score(x, t_vec)
        x = x_mean + jnp.sqrt(g2) * jax.random.normal(jax.random.fold_in(key_i, 0), x.shape, x.dtype)
        return (x, x_mean), None

    (x, x_mean), _ = jax.lax.scan(step, (x, x), jnp.arange(n_steps))
    return x_mean if denoise else x
