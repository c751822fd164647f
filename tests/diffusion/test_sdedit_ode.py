"""SDEdit on the probability-flow grid of any schedule: the start level follows diffusers' strength rule, the start
state is the forward process at that level, and strength 1 is plain ODE sampling from the same noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.checks import ConfigError
from mmdit_jax.diffusion.samplers.ode import probability_flow
from mmdit_jax.diffusion.schedules import RectifiedFlowSchedule, VPSchedule
from mmdit_jax.diffusion.sdedit import img2img_start, sdedit_ode


def _net(x, t):
    """A smooth velocity-like field that depends on x and t, so every step matters."""
    return jnp.tanh(x) * (1.0 + t[:, None, None, None]) - 0.3 * x


@pytest.mark.parametrize("schedule", [RectifiedFlowSchedule(), VPSchedule()], ids=["rectified_flow", "vp"])
def test_sdedit_starts_at_the_forward_process_of_the_start_level(schedule):
    key_x, key_e = jax.random.split(jax.random.PRNGKey(0))
    x0 = jax.random.normal(key_x, (2, 4, 4, 3))
    noise = jax.random.normal(key_e, x0.shape)
    n, strength = 10, 0.6
    start = img2img_start(n, strength)
    assert start == 4
    t_s = schedule.timesteps(n)[start]
    alpha, sigma = schedule.marginal(t_s)
    x_start = alpha * x0 + sigma * noise
    want = probability_flow(_net, schedule, "velocity", x_start, n, "euler", start=start)
    got = sdedit_ode(_net, schedule, "velocity", x0, noise, n, strength)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # by hand: Euler over the grid's last n - start steps
    ts, x = schedule.timesteps(n), x_start
    for i in range(start, n):
        x = x + (ts[i + 1] - ts[i]) * _net(x, jnp.full((2,), ts[i]))
    np.testing.assert_allclose(np.asarray(got), np.asarray(x), rtol=1e-5, atol=1e-5)
    # strength 1 is ODE sampling from x_{t_0}; the remaining steps from a later start are the tail of that grid
    full = sdedit_ode(_net, schedule, "velocity", x0, noise, n, 1.0)
    a0, s0 = schedule.marginal(schedule.timesteps(n)[0])
    np.testing.assert_array_equal(np.asarray(full),
                                  np.asarray(probability_flow(_net, schedule, "velocity", a0 * x0 + s0 * noise, n)))
    with pytest.raises(ConfigError, match="strength"):
        sdedit_ode(_net, schedule, "velocity", x0, noise, n, 0.0)
