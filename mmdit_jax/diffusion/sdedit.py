"""SDEdit (image-to-image) and latent inpainting on a flow-matching grid, as diffusers' SD3 pipelines do them.

Maths (``x_t = (1 - t) x0 + t eps``, ``t = sigma``; ``sigmas (n + 1,)`` the scheduler's grid, ``s`` the strength):

* Start index: ``t_start = int(max(n - min(n s, n), 0))`` (diffusers' ``get_timesteps``); the run uses
  ``sigmas[t_start:]``, i.e. ``n - t_start`` Euler steps from ``sigma_{t_start}``.
* ``scale_noise(x0, noise, sigma) = sigma noise + (1 - sigma) x0`` (``FlowMatchEulerDiscreteScheduler.scale_noise``):
  the forward process at level ``sigma``. SDEdit starts the Euler loop at ``scale_noise(x0, noise, sigma_{t_start})``.
* Inpainting with a plain (non-inpainting) velocity model, mask ``m = 1`` where the image is repainted: after Euler
  step ``i`` (``sigma_i -> sigma_{i+1}``), ``x <- (1 - m) scale_noise(x0, noise, sigma_{i+1}) + m x``, with the
  *same* ``noise`` at every step, and ``x0`` itself (no noise) after the last step.

Shapes: ``x, x0, noise (B, h, w, C)`` NHWC latents, ``mask (B, h, w, 1)`` (or anything broadcasting to ``x``).
Everything above works for any velocity model ``net(x, t)`` with ``t (B,)`` the level ``sigma``.

SDEdit on any schedule of the core (``sdedit_ode``): on the probability-flow grid ``t_0 > ... > t_n`` of
``schedule.timesteps(n)``, start at ``x_{t_s} = alpha(t_s) x0 + sigma(t_s) eps`` with the same ``t_s`` index rule
and integrate the ODE (Euler or Heun) over the remaining ``n - t_s`` steps, for a model in any parameterisation.
A run's ``sample.sampler`` says which ODE and how many steps (``ode_method``).
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_positive_int
from mmdit_jax.diffusion.flow_match import euler_levels, euler_step
from mmdit_jax.diffusion.parameterization import Net
from mmdit_jax.diffusion.samplers.ode import probability_flow
from mmdit_jax.diffusion.schedules import Schedule

Array = jax.Array
# the samplers whose grid is the probability-flow ODE -> its method (None: the sampler config's ``method``)
ODE_SAMPLERS = {"ode": None, "flow_euler": "euler"}


def img2img_start(num_inference_steps: int, strength: float) -> int:
    """diffusers' ``t_start``: the first grid index an SDEdit run with ``strength`` in (0, 1] denoises from.

    ``strength = 1`` starts at ``sigma_0`` (all steps); smaller strengths skip ``n - int(n s)``-ish leading steps
    (the float expression is diffusers' own, truncation included). At least one step must remain.
    """
    check_positive_int("num_inference_steps", num_inference_steps)
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength must be a number in (0, 1] (1 = start from pure noise), got {strength!r}")
    init_timestep = min(num_inference_steps * strength, num_inference_steps)
    t_start = int(max(num_inference_steps - init_timestep, 0))
    if t_start >= num_inference_steps:
        raise ConfigError(f"strength={strength!r} leaves no denoising step of num_inference_steps="
                          f"{num_inference_steps}; use strength >= {1 / num_inference_steps:g} or more steps")
    return t_start


def scale_noise(x0: Array, noise: Array, sigma: Array | float) -> Array:
    """The flow-matching forward process ``sigma noise + (1 - sigma) x0`` (``sigma`` a scalar or broadcasting)."""
    sigma = jnp.asarray(sigma, jnp.result_type(x0))
    return sigma * noise + (1 - sigma) * x0


def inpaint_flow_match_euler(net: Net, x: Array, sigmas: np.ndarray | Array, x0: Array, noise: Array, mask: Array,
                             per_step: Any = None) -> Array:
    """Euler on ``sigmas (n + 1,)`` from ``x`` (at ``sigmas[0]``), keeping the unmasked region on ``x0``'s path.

    After step ``i`` the state is ``(1 - mask) scale_noise(x0, noise, sigma_{i+1}) + mask x``; after the last step
    ``x0`` itself is kept outside the mask (diffusers never re-noises there, whatever the grid's end level is).
    ``per_step`` is passed to the network as in ``flow_match_euler``. Returns ``(B, h, w, C)`` float32.
    """
    in_dtype, acc = x.dtype, jnp.promote_types(x.dtype, jnp.float32)
    levels, dts = euler_levels(sigmas)
    # level of the known region after each step; 0 after the last makes scale_noise return x0 exactly
    blend = np.asarray(sigmas, np.float32)[1:].copy()
    blend[-1] = 0.0
    x0, noise, mask = (jnp.asarray(a, acc) for a in (x0, noise, mask))

    def step(x: Array, inputs: tuple[Array, Array, Array, Any]) -> tuple[Array, None]:
        t, dt, level, extra = inputs
        x = euler_step(net, x, t, dt, in_dtype, *(() if per_step is None else (extra,)))
        return (1 - mask) * scale_noise(x0, noise, level) + mask * x, None

    x, _ = jax.lax.scan(step, x.astype(acc), (levels, dts, jnp.asarray(blend), per_step))
    return x


def sdedit_ode(net: Net, schedule: Schedule, parameterization: str, x0: Array, noise: Array, n_steps: int,
               strength: float, method: str = "euler") -> Array:
    """SDEdit of ``x0 (B, ...)`` with ``noise`` (same shape): noise to grid index ``img2img_start(n, strength)`` of
    ``schedule.timesteps(n_steps)``, then the probability-flow ODE to ``t_n``. ``strength = 1`` is sampling from
    the prior (up to the schedule's ``alpha(t_0)``). Returns ``(B, ...)`` in ``x0``'s dtype."""
    start = img2img_start(n_steps, strength)
    t_start = schedule.timesteps(n_steps)[start]
    alpha, sigma = schedule.marginal(t_start)
    x = alpha * x0 + sigma * noise.astype(x0.dtype)
    return probability_flow(net, schedule, parameterization, x.astype(x0.dtype), n_steps, method, start=start)


def inpaint_ode(net: Net, schedule: Schedule, parameterization: str, x0: Array, noise: Array, mask: Array,
                n_steps: int, strength: float, method: str = "euler") -> Array:
    """Inpainting on the probability-flow ODE of any schedule: SDEdit of ``x0`` (``sdedit_ode``) where, after every
    step to ``t_{i+1}``, the known region is put back noised to that level,
    ``x <- (1 - m) (alpha(t_{i+1}) x0 + sigma(t_{i+1}) noise) + m x`` (``mask`` 1 = repaint, broadcasting against
    ``x0``); at the last step ``alpha(t_n) x0 + sigma(t_n) noise`` is ``x0`` up to the schedule's end point.
    ``strength = 1`` starts from pure noise. Returns ``(B, ...)`` in ``x0``'s dtype."""
    start = img2img_start(n_steps, strength)
    t_start = schedule.timesteps(n_steps)[start]
    alpha, sigma = schedule.marginal(t_start)
    noise = noise.astype(x0.dtype)
    mask = jnp.asarray(mask, x0.dtype)

    def project(x: Array, t: Array) -> Array:
        a, s = schedule.marginal(t)
        return (1 - mask) * (a * x0 + s * noise).astype(x.dtype) + mask * x

    x = alpha * x0 + sigma * noise
    return probability_flow(net, schedule, parameterization, x.astype(x0.dtype), n_steps, method, start=start,
                            project=project)


def ode_method(sampler: Mapping[str, Any], n_steps: int | None = None) -> tuple[int, str]:
    """``(n_steps, method)`` SDEdit and inpainting integrate on the grid of a run's ``sample.sampler`` config
    (``n_steps`` overrides the config's); errors name ``sample.sampler.name``."""
    name = sampler["name"]
    if name not in ODE_SAMPLERS:
        raise ConfigError(f"image-to-image (SDEdit) and inpainting integrate the probability-flow ODE: "
                          f"sample.sampler.name={name!r} must be one of {sorted(ODE_SAMPLERS)}")
    method = ODE_SAMPLERS[name] or sampler.get("method", "euler")
    return int(sampler["n_steps"] if n_steps is None else n_steps), method
