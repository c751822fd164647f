"""The train step on 4 simulated CPU devices, data-parallel and FSDP, equals one device (<= 1e-5); two runs
with the same seed are identical; a batch not divisible by the device count is rejected.

Parameters are compared per leaf in relative L2 norm. A max-abs-over-max criterion is ill-conditioned after
Adam steps: Adam normalises each coordinate's gradient, so a coordinate whose gradient is mostly cancellation
turns reduction-order rounding into an O(lr) step. Measured (3 steps, tiny config): max-abs relative 7.2e-6
(autodiff attention) and 1.6e-5 (custom-gradient attention), both on ``context_embedder/bias`` alone; in norm
1.4e-6 and 3.0e-6, every other leaf <= 6e-7.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# configure_runtime() first, as the training entry point does: the train steps compared are then compiled as
# training compiles them (XLA:CPU multi-output fusion), which also compiles them about a fifth faster.
SCRIPT = textwrap.dedent("""
    import dataclasses, sys
    from mmdit_jax.runtime import configure_runtime
    configure_runtime()
    import jax, numpy as np
    from configs.default import get_config
    from mmdit_jax.train import sharding
    from mmdit_jax.train.experiment import build
    from mmdit_jax.checks import ConfigError
    assert jax.device_count() == 4
    cfg = get_config("tiny")
    exp, _, _ = build(cfg, sys.argv[1], restore=False)
    it = exp.train_iterator()
    host_batches = [next(it) for _ in range(3)]
    host_state = jax.device_get(exp.state)

    def run(data, fsdp, devices):
        mesh = sharding.make_mesh(data, fsdp, devices)
        sh = sharding.state_shardings(host_state, mesh)
        e = dataclasses.replace(exp, mesh=mesh, state_shardings=sh)
        step = e.train_step()
        state = jax.device_put(host_state, sh)
        losses = []
        for b in host_batches:
            state, m = step(state, e.device_batch(b), jax.random.PRNGKey(1))
            losses.append(float(m["loss"]))
        return np.array(losses), jax.device_get(state.params)

    def max_rel(a, b):
        return max(float(np.linalg.norm(x - y) / (np.linalg.norm(y) + 1e-12))
                   for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    l1, p1 = run(1, 1, jax.devices()[:1])
    l1b, p1b = run(1, 1, jax.devices()[:1])
    assert np.array_equal(l1, l1b) and max_rel(p1, p1b) == 0.0, "same seed must give identical results"
    for data, fsdp in [(4, 1), (1, 4), (2, 2)]:
        l, p = run(data, fsdp, jax.devices())
        assert np.max(np.abs(l - l1) / np.abs(l1)) <= 1e-5, (data, fsdp, l, l1)
        assert max_rel(p, p1) <= 1e-5, (data, fsdp, max_rel(p, p1))
        print("ok", data, fsdp)
    fsdp_mesh = sharding.make_mesh(1, 4, jax.devices())
    spec = sharding.state_shardings(host_state, fsdp_mesh).params["transformer_blocks_0"]["ff"]["proj_in"]["kernel"].spec
    assert "fsdp" in spec, spec
    bad = cfg.copy_and_resolve_references()
    bad.data.batch_size = 6
    try:
        build(bad, sys.argv[1], restore=False)
        raise AssertionError("batch 6 on 4 devices was accepted")
    except ConfigError as e:
        assert "data.batch_size=6" in str(e) and "device count 4" in str(e)
    print("ok bad batch")
""")


@pytest.mark.slow
def test_data_parallel_and_fsdp_equal_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("ok") == 4
