"""Checkpoints: a corrupt newest checkpoint falls back to the previous one; none readable is an error."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from mmdit_jax.checkpoints import CheckpointError, Checkpointer, check_workdir, restore_params
from mmdit_jax.checks import ConfigError


def _state(v):
    return {"w": jnp.full((4, 3), v, jnp.float32), "step": jnp.asarray(v, jnp.int32)}


def _corrupt(step_dir):
    for root, _, files in os.walk(step_dir):
        for name in files:
            if "state" in root:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    ck = Checkpointer(str(tmp_path), keep=3, async_save=False)
    for step in (1, 2):
        ck.save(step, _state(step), {"iterator": {"next_index": step}}, '{"a": 1}')
    ck.wait()
    _corrupt(tmp_path / "2")
    with caplog.at_level("WARNING"):
        step, state, data = Checkpointer(str(tmp_path)).restore_latest(_state(0))
    assert step == 1 and data == {"iterator": {"next_index": 1}}
    np.testing.assert_array_equal(state["w"], np.ones((4, 3)))
    # the fallback is one visible line naming the step that could not be read
    fallback = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR") and "checkpoint" in r.getMessage()]
    assert len(fallback) == 1 and "step 2" in fallback[0].getMessage()
    assert len(fallback[0].getMessage().splitlines()) == 1


def test_no_readable_checkpoint_raises_instead_of_restarting(tmp_path):
    ck = Checkpointer(str(tmp_path), keep=3, async_save=False)
    ck.save(1, _state(1), {}, "{}")
    ck.wait()
    _corrupt(tmp_path / "1")
    with pytest.raises(CheckpointError, match="refusing to start from scratch"):
        Checkpointer(str(tmp_path)).restore_latest(_state(0))
    assert Checkpointer(str(tmp_path / "empty")).restore_latest(_state(0)) is None


def test_incomplete_save_is_ignored(tmp_path):
    ck = Checkpointer(str(tmp_path), keep=3, async_save=False)
    ck.save(1, _state(1), {}, "{}")
    ck.wait()
    os.makedirs(tmp_path / "2.orbax-checkpoint-tmp" / "state")     # what a SIGKILL mid-save leaves behind
    assert Checkpointer(str(tmp_path)).restore_latest(_state(0))[0] == 1


def test_unwritable_workdir_is_named():
    with pytest.raises(ConfigError, match="/proc/nope"):
        check_workdir("/proc/nope/run")


def test_inference_restores_one_subtree_of_the_newest_readable_checkpoint_and_writes_nothing(tmp_path):
    import jax

    ck = Checkpointer(str(tmp_path), keep=3, async_save=False)
    for step in (1, 2, 3):
        ck.save(step, {"ema_params": _state(step), "opt_state": _state(-step)}, {}, "{}")
    ck.wait()
    os.makedirs(tmp_path / "4.orbax-checkpoint-tmp" / "state")     # an interrupted save is not a checkpoint
    _corrupt(tmp_path / "3")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))
    step, params = restore_params(str(tmp_path), abstract)
    assert step == 2 and set(params) == {"w", "step"}
    np.testing.assert_array_equal(params["w"], np.full((4, 3), 2.0))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    with pytest.raises(CheckpointError, match=str(tmp_path / "none")):
        restore_params(str(tmp_path / "none"), abstract)
    assert not (tmp_path / "none").exists()


def test_late_read_callbacks_of_an_abandoned_restore_are_dropped_and_nothing_else(monkeypatch):
    """After an unreadable checkpoint, TensorStore reads complete on Orbax's closed asyncio loop (dozens of
    'Event loop is closed' tracebacks): that report alone is dropped, other unraisable exceptions still reach the
    previous hook."""
    import asyncio
    import sys

    from mmdit_jax import checkpoints

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(str(u.exc_value)))
    checkpoints._quiet_late_read_callbacks()
    checkpoints._quiet_late_read_callbacks()     # installed once
    loop = asyncio.new_event_loop()
    loop.close()

    class Unraisable:
        def __init__(self, error):
            self.exc_type, self.exc_value, self.exc_traceback = type(error), error, error.__traceback__

    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        late = e
    sys.unraisablehook(Unraisable(late))
    try:
        raise RuntimeError("Event loop is closed")    # the same text from elsewhere is not dropped
    except RuntimeError as e:
        elsewhere = e
    sys.unraisablehook(Unraisable(elsewhere))
    sys.unraisablehook(Unraisable(ValueError("other")))
    assert seen == ["Event loop is closed", "other"]
