"""A run killed with SIGKILL and restarted with the same command ends with the same losses and parameters as an
uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmdit_jax.reporting import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 60


def command(workdir):
    return [sys.executable, "-m", "mmdit_jax", "--config=configs/default.py:tiny", f"--workdir={workdir}",
            f"--config.train.num_steps={STEPS}", "--config.train.checkpoint_every=10", "--config.train.log_every=1",
            "--config.train.sample_every=0"]


def final_losses(workdir):
    losses = {}
    for row in read_metrics(str(workdir)):
        if "loss" in row:
            losses[row["step"]] = row["loss"]      # a re-run step overwrites the killed run's entry
    return losses


def final_params(workdir):
    restored = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(STEPS), "state"))
    return restored


@pytest.mark.slow
# final_params reads the checkpoints without a target tree: Orbax warns that it takes the shardings from the files.
@pytest.mark.filterwarnings("ignore:Sharding info not provided when restoring")
def test_sigkill_and_restart_reproduces_the_uninterrupted_run(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    a, b = tmp_path / "a", tmp_path / "b"
    done = subprocess.run(command(a), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(command(b), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while not (b / "checkpoints" / "10").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(final_losses(b))
    assert killed_at < STEPS, "the run finished before it was killed"

    again = subprocess.run(command(b), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from checkpoint step" in again.stdout

    la, lb = final_losses(a), final_losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, STEPS + 1))
    assert [la[s] for s in sorted(la)] == [lb[s] for s in sorted(lb)]
    pa, pb = final_params(str(a)), final_params(str(b))
    jax.tree_util.tree_map(np.testing.assert_array_equal, pa, pb)
    assert int(np.asarray(pa["step"])) == STEPS
