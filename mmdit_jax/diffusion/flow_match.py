"""diffusers' ``FlowMatchEulerDiscreteScheduler`` grid, reproduced exactly, and the Euler sampler on it.

``flow_match_schedule(n, config, sigmas=..., mu=...)`` returns what ``FlowMatchEulerDiscreteScheduler(**config)``
holds after ``set_timesteps(n, sigmas=sigmas, mu=mu)``: ``sigmas (n + 1,)`` and ``timesteps (n,)`` (float32, in
diffusers' units ``timesteps = 1000 sigmas``), computed in the same dtypes, in the same order of operations, so the
values agree bit for bit. ``sigma`` is this package's rectified-flow time ``t`` (``x_t = (1 - t) x0 + t eps``).

The equations (``T = num_train_timesteps``, ``S = shift``, ``shift_S(u) = S u / (1 + (S - 1) u)``):

* Construction (float32): ``s_k = k / T`` for ``k = T, ..., 1``; without dynamic shifting ``s_k <- shift_S(s_k)``.
  Only the ends are kept: ``sigma_max = s_T``, ``sigma_min = s_1``, i.e. ``1`` and ``shift_S(1/T)``
  (``1/T`` with dynamic shifting).
* ``set_timesteps`` (float64 for the default grid, float32 for custom ``sigmas``):
  ``u = linspace(T sigma_max, T sigma_min, n) / T`` (or ``u = sigmas``), then
  static: ``sigma = shift_S(u)``; dynamic, exponential: ``sigma = e^mu / (e^mu + 1/u - 1)``;
  dynamic, linear: ``sigma = mu / (mu + 1/u - 1)``. Both dynamic forms are ``shift_S`` with ``S = e^mu`` or
  ``S = mu`` (diffusers' exponent on ``1/u - 1`` is always 1 there). Optionally ``shift_terminal``:
  ``sigma <- 1 - (1 - sigma) (1 - shift_terminal) / (1 - sigma_{n-1})`` so the last level is ``shift_terminal``.
  Then float32, ``timesteps = T sigma``, and ``0`` appended (``invert_sigmas``: ``sigma <- 1 - sigma``,
  ``timesteps = T sigma``, ``1`` appended; Mochi's convention, not a rectified-flow grid here).

Why SD3's shift "appears twice": the construction shifts the training levels, and ``set_timesteps`` reads only
their lower end, ``sigma_min = shift_S(1/T)``, as the end of a fresh uniform ``linspace``, which it then shifts.
So no value is shifted twice except that end: the grid is ``shift_S`` of ``linspace(1, shift_S(1/T), n)``, whose
first level is ``1`` and whose last nonzero level is ``shift_S(shift_S(1/T)) = shift_{S^2}(1/T)``
``= S^2 / (T + S^2 - 1)`` (shifts compose: ``shift_A o shift_B = shift_{AB}``); for SD3 (``S = 3``) that is
``9/1008 = 0.00893`` rather than ``shift_3(1/1000) = 0.00299``. ``RectifiedFlowSchedule.timesteps`` builds the same grid in float32 JAX arithmetic.
With dynamic shifting (FLUX) the construction does not shift, so the shift enters once. FLUX's pipeline passes
``sigmas = linspace(1, 1/n, n)`` and ``mu = calculate_shift(image_seq_len)`` (linear in the number of packed 2x2
latent tokens: 0.5 at 256, 1.15 at 4096, i.e. ``S = e^mu`` from 1.65 to 3.16); SD3's pipeline passes no sigmas.

Starting noise: the SD3, SD3.5 and FLUX pipelines draw plain ``randn`` latents and never scale them by
``sigma_0``; every grid they build starts at ``sigma_0 = 1`` (``shift_S(1) = 1``, ``e^mu / (e^mu + 0) = 1``, up to
float32 rounding for odd shifts), where that is the prior ``N(0, I)`` exactly. ``flow_match_euler`` does the same: ``x = z`` whatever ``sigma_0`` is, so a
custom grid starting below 1 behaves as in diffusers.

The Euler step is diffusers' ``x <- x + (sigma_{i+1} - sigma_i) v(x, sigma_i)`` in float32 with the float32
``dt`` diffusers forms. One difference: diffusers casts the state back to the network's output dtype after each
step (bf16 latents in a bf16 pipeline); here the state stays float32 (at least), as in every sampler of this
package, and only the network's input is cast.
"""

from __future__ import annotations

import math
import types
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmdit_jax.checks import ConfigError, check_choice, check_keys, check_less, check_positive, check_positive_int
from mmdit_jax.diffusion.parameterization import Net, as_parameterization
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule, Schedule

Array = jax.Array

# FlowMatchEulerDiscreteScheduler's constructor arguments and defaults.
SCHEDULER_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
})

# Options no SD3 / SD3.5 / FLUX scheduler config turns on; rejected rather than silently ignored.
UNSUPPORTED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling")

# The scheduler_config.json of each release, less the "_class_name" / "_diffusers_version" metadata.
# SD3.5 ships the same scheduler as SD3 medium.
SCHEDULER_CONFIGS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType({
    "sd3": types.MappingProxyType({"num_train_timesteps": 1000, "shift": 3.0}),
    "sd35": types.MappingProxyType({"num_train_timesteps": 1000, "shift": 3.0}),
    "flux_dev": types.MappingProxyType({
        "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
        "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}),
    "flux_schnell": types.MappingProxyType({
        "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False, "base_shift": 0.5,
        "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}),
})


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's ``mu``, linear in the tokens: ``base_shift`` at ``base_seq_len``, ``max_shift`` at ``max_seq_len``."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def dynamic_mu(config: Mapping[str, Any] | None, image_seq_len: int) -> float:
    """``calculate_shift`` with a scheduler config's ``base_/max_`` fields, as the FLUX and SD3 pipelines call it."""
    cfg = scheduler_config(config)
    return calculate_shift(image_seq_len, cfg["base_image_seq_len"], cfg["max_image_seq_len"],
                           cfg["base_shift"], cfg["max_shift"])


def flux_sigmas(n: int) -> np.ndarray:
    """FLUX's custom grid ``linspace(1, 1/n, n)``, float64 ``(n,)``, before the time shift."""
    check_positive_int("num_inference_steps", n)
    return np.linspace(1.0, 1.0 / n, n)


def scheduler_config(config: Mapping[str, Any] | None, prefix: str = "scheduler") -> dict[str, Any]:
    """A validated scheduler config: diffusers' defaults overlaid with ``config``.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version`` of a ``scheduler_config.json``) are metadata;
    a ``_class_name`` other than ``FlowMatchEulerDiscreteScheduler`` is an error. Errors name ``<prefix>.<key>``.
    """
    cfg = dict(config or {})
    class_name = cfg.get("_class_name", "FlowMatchEulerDiscreteScheduler")
    if class_name != "FlowMatchEulerDiscreteScheduler":
        raise ConfigError(f"{prefix}._class_name={class_name!r}: only FlowMatchEulerDiscreteScheduler is reproduced")
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    check_keys(prefix, cfg, SCHEDULER_DEFAULTS)
    cfg = {**SCHEDULER_DEFAULTS, **cfg}
    for key in UNSUPPORTED:
        if cfg[key]:
            raise ConfigError(f"{prefix}.{key}={cfg[key]!r} is not supported: SD3, SD3.5 and FLUX leave it False")
    check_positive_int(f"{prefix}.num_train_timesteps", cfg["num_train_timesteps"])
    check_positive(f"{prefix}.shift", cfg["shift"])
    check_choice(f"{prefix}.time_shift_type", cfg["time_shift_type"], ("exponential", "linear"))
    check_less(f"{prefix}.base_image_seq_len", cfg["base_image_seq_len"],
               f"{prefix}.max_image_seq_len", cfg["max_image_seq_len"])
    terminal = cfg["shift_terminal"]
    if terminal and not 0.0 < terminal < 1.0:
        raise ConfigError(f"{prefix}.shift_terminal must be None or in (0, 1), got {terminal!r}")
    return cfg


def _shift(u: np.ndarray, shift: float) -> np.ndarray:
    # Scalars cast to u's dtype first: what torch and NumPy 2 do with a Python scalar and a float32 array.
    f = u.dtype.type
    return f(shift) * u / (f(1) + f(shift - 1) * u)


def _time_shift(u: np.ndarray, mu: float, kind: str) -> np.ndarray:
    f = u.dtype.type
    s = f(math.exp(mu)) if kind == "exponential" else f(mu)
    with np.errstate(divide="ignore"):  # u = 0 in a custom grid gives 1/u = inf and the right limit, 0
        return s / (s + (f(1) / u - f(1)))


def flow_match_schedule(
    num_inference_steps: int | None = None,
    config: Mapping[str, Any] | None = None,
    *,
    sigmas: Sequence[float] | np.ndarray | None = None,
    mu: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``FlowMatchEulerDiscreteScheduler(**config).set_timesteps(n, sigmas=sigmas, mu=mu)`` as NumPy arrays.

    Returns ``(sigmas (n + 1,), timesteps (n,))``, float32, ``sigmas[-1] = 0`` (1 with ``invert_sigmas``) and
    ``timesteps = num_train_timesteps * sigmas[:-1]``. ``sigmas``: a custom grid ``(n,)`` before shifting (FLUX:
    ``flux_sigmas(n)``); ``n`` may then be None. ``mu`` is required with ``use_dynamic_shifting`` and, as in
    diffusers, unused without it.
    """
    cfg = scheduler_config(config)
    n_train = cfg["num_train_timesteps"]
    if sigmas is not None:
        sigmas = np.asarray(sigmas)
        if sigmas.ndim != 1 or sigmas.size == 0:
            raise ConfigError(f"sigmas must be a non-empty 1-D grid, got shape {sigmas.shape}")
        if num_inference_steps is not None and num_inference_steps != sigmas.size:
            raise ConfigError(f"num_inference_steps ({num_inference_steps}) must equal len(sigmas) ({sigmas.size})")
        num_inference_steps = sigmas.size
    check_positive_int("num_inference_steps", num_inference_steps)
    if cfg["use_dynamic_shifting"] and mu is None:
        raise ConfigError("mu must be given when scheduler.use_dynamic_shifting=True, e.g. dynamic_mu(config, seq_len)")

    # Construction, float32: only the ends of the training levels are used later.
    train = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1] / np.float32(n_train)
    if not cfg["use_dynamic_shifting"]:
        train = _shift(train, cfg["shift"])
    sigma_max, sigma_min = float(train[0]), float(train[-1])

    if sigmas is None:
        u = np.linspace(sigma_max * n_train, sigma_min * n_train, num_inference_steps) / n_train
    else:
        u = sigmas.astype(np.float32)
    if cfg["use_dynamic_shifting"]:
        s = _time_shift(u, mu, cfg["time_shift_type"])
    else:
        s = _shift(u, cfg["shift"])
    if cfg["shift_terminal"]:
        f = s.dtype.type
        one_minus = f(1) - s
        if one_minus[-1] == 0:
            raise ConfigError("scheduler.shift_terminal needs a grid whose last level is below 1 (0/0 otherwise)")
        s = f(1) - one_minus / (one_minus[-1] / f(1 - cfg["shift_terminal"]))

    s = s.astype(np.float32)
    end = np.float32(0)
    if cfg["invert_sigmas"]:
        s, end = np.float32(1) - s, np.float32(1)
    timesteps = s * np.float32(n_train)
    return np.concatenate([s, [end]]).astype(np.float32), timesteps


def euler_levels(sigmas: np.ndarray | Array) -> tuple[Array, Array]:
    """``(levels (n,), dts (n,))`` of a grid ``sigmas (n + 1,)``: ``sigma_i`` and ``sigma_{i+1} - sigma_i``, the
    differences formed in float32 from the float32 levels, as diffusers' step forms them."""
    sig = np.asarray(sigmas, np.float32)
    return jnp.asarray(sig[:-1]), jnp.asarray(sig[1:] - sig[:-1])


def euler_step(net: Callable[..., Array], x: Array, t: Array, dt: Array, in_dtype: Any, *extra: Any) -> Array:
    """One Euler step ``x + dt net(x, t)`` with the state ``x (B, ...)`` kept in its (float32 or wider) dtype, the
    network's input cast to ``in_dtype`` and ``t`` a scalar level broadcast to ``(B,)``; ``extra`` (a per-step
    input of the loop, e.g. a guidance window flag) is passed on as ``net(x, t, *extra)``."""
    v = net(x.astype(in_dtype), jnp.full((x.shape[0],), t), *extra).astype(x.dtype)
    return x + dt * v


def flow_match_euler(net: Net, x: Array, sigmas: np.ndarray | Array, per_step: Any = None) -> Array:
    """Euler on a flow-matching grid: ``x <- x + (sigma_{i+1} - sigma_i) net(x, sigma_i)``, one ``lax.scan``.

    ``net(x, t)`` is a velocity model with ``t: (B,)``; ``x: (B, ...)`` at ``sigmas[0]``; ``sigmas: (n + 1,)``.
    ``per_step``: optional pytree of arrays with leading axis ``n``; step ``i`` then calls
    ``net(x, t, per_step[i])``. Returns ``(B, ...)`` in float32 (or x's dtype if wider).
    """
    in_dtype, acc = x.dtype, jnp.promote_types(x.dtype, jnp.float32)
    levels, dts = euler_levels(sigmas)

    def step(x: Array, inputs: tuple[Array, Array, Any]) -> tuple[Array, None]:
        t, dt, extra = inputs
        return euler_step(net, x, t, dt, in_dtype, *(() if per_step is None else (extra,))), None

    x, _ = jax.lax.scan(step, x.astype(acc), (levels, dts, per_step))
    return x


# --- the flow_match_euler sampler ------------------------------------------------------------------------------

# None: taken from the RectifiedFlowSchedule. ``mu`` None with dynamic shifting: calculate_shift of the image token
# count (H // patch_size) * (W // patch_size) of an NHWC sample shape, as the SD3 / FLUX pipelines compute it.
# ``sigmas``: "default" is the scheduler's own grid (SD3, SD3.5), "flux" FLUX's linspace(1, 1/n, n).
FLOW_MATCH_EULER_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({
    "n_steps": 28,
    "shift": None,
    "num_train_timesteps": None,
    "use_dynamic_shifting": False,
    "mu": None,
    "time_shift_type": "exponential",
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "patch_size": 2,
    "shift_terminal": None,
    "sigmas": "default",
})

_SCHEDULER_KEYS = ("use_dynamic_shifting", "time_shift_type", "base_shift", "max_shift", "base_image_seq_len",
                   "max_image_seq_len", "shift_terminal")


def _sampler_scheduler_config(s: Mapping[str, Any], schedule: RectifiedFlowSchedule) -> dict[str, Any]:
    cfg = {k: s[k] for k in _SCHEDULER_KEYS}
    cfg["shift"] = schedule.shift if s["shift"] is None else s["shift"]
    cfg["num_train_timesteps"] = s["num_train_timesteps"] or schedule.num_train_timesteps
    return scheduler_config(cfg, prefix="sampler")


def validate_flow_match_euler(s: dict[str, Any], schedule: Schedule) -> None:
    """Start-up checks of the ``flow_match_euler`` settings; errors name ``sampler.<field>``."""
    if not isinstance(schedule, RectifiedFlowSchedule):
        raise ConfigError("sampler.name='flow_match_euler' needs schedule.name='rectified_flow', "
                          f"got {type(schedule).__name__}")
    check_positive_int("sampler.n_steps", s["n_steps"])
    check_positive_int("sampler.patch_size", s["patch_size"])
    check_choice("sampler.sigmas", s["sigmas"], ("default", "flux"))
    if s["mu"] is not None and not s["use_dynamic_shifting"]:
        raise ConfigError(f"sampler.mu={s['mu']!r} is only used with sampler.use_dynamic_shifting=True")
    _sampler_scheduler_config(s, schedule)


def build_flow_match_euler(s: dict[str, Any], schedule: Schedule,
                           parameterization: str) -> Callable[[Net, Array, tuple[int, ...]], Array]:
    """``sample(net, key, shape)``: ``z ~ N(0, I)`` of ``shape``, then Euler on diffusers' grid."""
    assert isinstance(schedule, RectifiedFlowSchedule)
    cfg = _sampler_scheduler_config(s, schedule)
    n = s["n_steps"]

    def grid(shape: tuple[int, ...]) -> np.ndarray:
        mu = s["mu"]
        if cfg["use_dynamic_shifting"] and mu is None:
            if len(shape) != 4:
                raise ConfigError(f"sampler.mu=None with use_dynamic_shifting needs an NHWC sample shape to count "
                                  f"image tokens, got {shape}; set sampler.mu")
            p = s["patch_size"]
            mu = dynamic_mu(cfg, (shape[1] // p) * (shape[2] // p))
        custom = flux_sigmas(n) if s["sigmas"] == "flux" else None
        return flow_match_schedule(n, cfg, sigmas=custom, mu=mu)[0]

    def sample(net: Net, key: Array, shape: tuple[int, ...]) -> Array:
        key_init, _ = jax.random.split(key)  # the draw the other samplers use for their prior
        x = jax.random.normal(key_init, shape)
        velocity = as_parameterization(net, schedule, parameterization, "velocity")
        return flow_match_euler(velocity, x, grid(tuple(shape)))

    return sample
