"""Orbax checkpoints of a training workdir: train state (params, EMA, optimizer, step), data-iterator state and
the config, in ``<workdir>/checkpoints/<step>/``.

Saves are asynchronous and atomic (Orbax writes a temporary folder and renames it when complete), keeping
the newest ``keep`` steps. ``restore_latest`` tries the newest step first; if it cannot be read it logs the
failure and falls back to the previous one. If checkpoints exist but none can be read it raises: a run is
never silently restarted from scratch.

Inference reads only what it needs: ``restore_params`` restores one subtree (the EMA weights) of the newest
checkpoint, without allocating the optimizer state, and creates nothing in the workdir.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from mmdit_jax.checks import ConfigError


class CheckpointError(RuntimeError):
    """Checkpoints exist but none could be restored."""


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, data_state: dict, config_json: str) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(json.loads(config_json))))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """``(step, state, data_state)`` of the newest readable checkpoint, or None if there is none."""
        steps = self.steps()
        if not steps:
            return None
        errors = []
        for step in reversed(steps):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                if errors:
                    logging.warning("restored the earlier checkpoint at step %d: %s", step, "; ".join(errors))
                return step, restored["state"], dict(restored["data"])
            except Exception as e:  # any unreadable checkpoint: try the previous one (one warning if one works)
                _quiet_late_read_callbacks()
                errors.append(f"checkpoint step {step} in {self.directory} could not be restored "
                              f"({type(e).__name__}: {_first_line(e)})")
        self.close()   # closed before raising: an open asynchronous manager prints errors when the process exits
        raise CheckpointError("no checkpoint could be restored, refusing to start from scratch over them:\n"
                              + "\n".join(errors))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, for a sharded restore."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def check_workdir(workdir: str) -> None:
    """Fail early, naming the folder, if the workdir cannot be created or written."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")   # hosts may share the workdir
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir={workdir!r} is not writable: {e}") from e


def checkpoint_steps(directory: str) -> list[int]:
    """Steps of the finished checkpoints in ``directory`` (none if it does not exist); creates nothing."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def restore_params(directory: str, abstract_params: Any, item: str = "ema_params",
                   step: int | None = None) -> tuple[int, Any]:
    """``(step, params)``: the ``item`` subtree of the train state in the newest readable checkpoint, or in the
    checkpoint of ``step`` exactly (no fallback to another step).

    ``abstract_params`` gives the shapes, dtypes and shardings (``jax.ShapeDtypeStruct``). Raises
    ``CheckpointError`` naming the folder if there is no checkpoint (of ``step``) or none can be read.
    """
    steps = checkpoint_steps(directory)
    if not steps:
        raise CheckpointError(f"no checkpoint in {directory}: train first, or pass the workdir of a trained run")
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{directory} has no checkpoint of step {step} (it has {steps})")
        steps = [step]
    # A bare Checkpointer on the step folder: reads only, and (unlike a read-only manager) logs nothing.
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    target = {item: abstract_params}
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
    errors = []
    for step in reversed(steps):
        try:
            params = checkpointer.restore(os.path.join(directory, str(step)), args=args)["state"][item]
        except Exception as e:  # an unreadable checkpoint: try the previous one, say so if none works
            _quiet_late_read_callbacks()
            errors.append(f"checkpoint step {step} in {directory} could not be restored "
                          f"({type(e).__name__}: {_first_line(e)})")
            continue
        if errors:   # one visible line: the weights are not the newest checkpoint's
            logging.warning("using the earlier checkpoint at step %d: %s", step, "; ".join(errors))
        return step, params
    raise CheckpointError("no checkpoint could be restored:\n" + "\n".join(errors))


def _first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, at most ``limit`` characters (Orbax's shape errors run to pages,
    TensorStore's read errors carry the whole store spec on one line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[0] if lines else type(error).__name__
    return line if len(line) <= limit else line[:limit] + " ..."


def _is_late_read_callback(unraisable: Any) -> bool:
    """A TensorStore read of an abandoned restore completing after Orbax closed the restore's asyncio loop: its
    callback finds the loop closed. Nothing is lost (the restore already failed and was reported)."""
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
            and tb is not None and tb.tb_frame.f_code.co_name == "_check_closed")


def _quiet_late_read_callbacks() -> None:
    """Drop ``_is_late_read_callback`` reports (dozens of tracebacks after one unreadable checkpoint); every other
    unraisable exception still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_late_reads", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_late_read_callback(unraisable):
            previous(unraisable)

    hook._drops_late_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
