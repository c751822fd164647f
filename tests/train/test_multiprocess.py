"""Two processes x two simulated CPU devices (jax.distributed on 127.0.0.1, gloo collectives) train exactly like
one process with four devices."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from mmdit_jax.reporting import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["-m", "mmdit_jax", "--config=configs/default.py:tiny", "--config.train.num_steps=4",
        "--config.train.log_every=1", "--config.train.checkpoint_every=2", "--config.train.sample_every=0"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    # All three processes start at once: most of each one's time is single-threaded start-up and compilation.
    base = dict(os.environ, JAX_PLATFORMS="cpu")
    one = subprocess.Popen([sys.executable, *ARGS, f"--workdir={tmp_path / 'one'}"], cwd=ROOT,
                           env=dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = _free_port()
    env = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=2", MMDIT_CPU_COLLECTIVES="gloo")
    procs = [subprocess.Popen([sys.executable, *ARGS, f"--workdir={tmp_path / 'two'}", "--multihost",
                               f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in (one, *procs)]
    finally:  # a hung process (e.g. a collective waiting for its peer) must not outlive the test
        for p in (one, *procs):
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip((one, *procs), outs):
        assert p.returncode == 0, err[-3000:]
    assert "process 0/2, 4 devices" in outs[1][0]

    def losses(d):
        return np.array([r["loss"] for r in read_metrics(str(d)) if "loss" in r])

    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == len(l2) == 4
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    assert (tmp_path / "two" / "checkpoints" / "4").exists()
