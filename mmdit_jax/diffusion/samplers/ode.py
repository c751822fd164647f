"""Probability-flow ODE samplers: Euler and Heun (EDM Algorithm 1), and SD3's flow-matching Euler.

The probability-flow ODE of a Gaussian path is ``dx/dt = f x - 1/2 g^2 score``, which equals the
``velocity`` parameterisation ``alpha' x0_hat + sigma' eps_hat`` (see ``parameterization``); so every
model, whatever it predicts, is integrated through one conversion. On the grid ``t_0 > ... > t_n``:

    Euler:  x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)
    Heun:   x' = Euler step;  x_{i+1} = x_i + (t_{i+1} - t_i) (v(x_i, t_i) + v(x', t_{i+1})) / 2,
            except where t_{i+1} = 0 (plain Euler there, as EDM does): NFE = 2n - 1 on EDM / flow grids.

For rectified flow with the SD3 shift, ``flow_euler`` is exactly diffusers' FlowMatchEulerDiscreteScheduler
(``x <- x + (sigma_{i+1} - sigma_i) v``, updates in float32).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmdit_jax.diffusion.parameterization import Net, as_parameterization
from mmdit_jax.diffusion.schedules import Schedule

Array = jax.Array


def probability_flow(
    net: Net, schedule: Schedule, parameterization: str, x: Array, n_steps: int, method: str = "euler",
    start: int = 0, project: Callable[[Array, Array], Array] | None = None,
) -> Array:
    """Integrate the probability-flow ODE from ``x = x_{t_start}`` to ``t_n`` on the ``n_steps`` grid (``start > 0``:
    the last ``n_steps - start`` steps only, as SDEdit does); returns ``(B, ...)`` in x's dtype. ``project(x,
    t_next)``, when given, maps the state after every step (inpainting puts the known region back there)."""
    velocity = as_parameterization(net, schedule, parameterization, "velocity")
    ts = schedule.timesteps(n_steps)
    batch, dtype = x.shape[0], x.dtype
    acc = jnp.promote_types(dtype, jnp.float32)  # integrate in at least float32, as diffusers does

    def v(x, t):
        return velocity(x.astype(dtype), jnp.full((batch,), t)).astype(acc)

    def step(x, i):
        t, t_next = ts[i], ts[i + 1]
        d = v(x, t)
        x_euler = x + (t_next - t) * d
        if method == "heun":
            heun = lambda: x + (t_next - t) * 0.5 * (d + v(x_euler, t_next))  # noqa: E731
            x_euler = jax.lax.cond(t_next > 0, heun, lambda: x_euler)
        return (x_euler if project is None else project(x_euler, t_next)), None

    x, _ = jax.lax.scan(step, x.astype(acc), jnp.arange(start, n_steps))
    return x.astype(dtype)
