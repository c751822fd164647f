"""The jit-compiled train step compiles once per run: new batches, new keys and a state restored from a checkpoint
all hit the same executable. A silent recompile (a weak-typed or re-dtyped leaf after restore, a sharding that
drifts between steps) would cost a full compile at every occurrence and show only as a slow run."""

import jax

from configs.default import get_config
from mmdit_jax.train.experiment import build


def _compiles(fn) -> int:
    return fn._cache_size()  # number of executables jit holds for this function (private, but the direct count)


def test_train_step_compiles_once_across_steps_and_a_restore(tmp_path):
    cfg = get_config("tiny")
    exp, start, _ = build(cfg, str(tmp_path), restore=False)
    assert start == 0
    it = exp.train_iterator()
    step = exp.train_step()
    state = exp.state
    for i in range(3):
        state, metrics = step(state, exp.device_batch(next(it)), jax.random.PRNGKey(i))
    assert _compiles(step) == 1
    exp.checkpointer.save(3, state, {"iterator": it.get_state()}, exp.config_json())
    exp.checkpointer.wait()

    restored, start, data_state = build(cfg, str(tmp_path))
    assert start == 3 and data_state is not None
    state, metrics = step(restored.state, exp.device_batch(next(it)), jax.random.PRNGKey(9))
    assert bool(jax.numpy.isfinite(metrics["loss"]))
    assert _compiles(step) == 1, "the restored state needed a new executable"
