"""Samplers under a sharded batch (4 simulated CPU devices, in a subprocess) equal the single-device result."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from mmdit_jax.diffusion.samplers import make_sampler
    from mmdit_jax.diffusion.schedules import VESchedule, RectifiedFlowSchedule
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    net = lambda x, t: -x / (1.0 + t[:, None] ** 2)
    for sched, cfg in [(VESchedule(sigma_max=5.0), {"name": "pc", "n_steps": 20}),
                       (VESchedule(sigma_max=5.0), {"name": "annealed_langevin", "n_steps_each": 5}),
                       (RectifiedFlowSchedule(shift=3.0), {"name": "flow_euler", "n_steps": 10})]:
        sample = make_sampler(cfg, sched, "score" if cfg["name"] != "flow_euler" else "velocity")
        key = jax.random.PRNGKey(0)
        single = jax.jit(lambda k: sample(net, k, (16, 3)), device=jax.devices()[0])(key)
        sharded_fn = jax.jit(lambda k: sample(net, k, (16, 3)), out_shardings=NamedSharding(mesh, P("data")))
        sharded = sharded_fn(key)
        assert len(sharded.sharding.device_set) == 4
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5, atol=1e-5)
        print("ok", cfg["name"])
""")


def test_samplers_give_the_same_result_on_a_sharded_batch():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("ok") == 3
