"""``mmdit-jax`` / ``python -m mmdit_jax``: ``--config=configs/<file>.py[:arg] --workdir=DIR
--mode=train|sample|eval|export_lora``.

Override any field with ``--config.a.b=value``; a missing config file, unknown keys and invalid values are rejected
at start with one line naming the flag or field (exit status 2; the traceback too with ``--verbosity=1``).
``sample`` and ``eval`` need a checkpoint in the workdir (``--allow_untrained`` samples the initialisation instead).
Multi-host: pass ``--multihost`` (SLURM / TPU pods auto-detect; otherwise set ``--coordinator``,
``--num_processes`` and ``--process_id``) and every process runs the same command.
``--notuned_runtime`` skips ``mmdit_jax.runtime``'s process settings; the flags and error handling every command
shares are in ``mmdit_jax.harness``.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from mmdit_jax.harness import run_command
from mmdit_jax.reporting import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "export_lora"], "What to run.")
_OUT = flags.DEFINE_string("out", None, "--mode=export_lora: output folder (default <workdir>/lora_export).")
_PROMPTS = flags.DEFINE_list("prompts", None, "Prompts for --mode=sample (default: config.sample.prompts).")
_UNTRAINED = flags.DEFINE_bool("allow_untrained", False, "--mode=sample|eval on a workdir without a checkpoint: use "
                               "the untrained initialisation instead of failing.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host without auto-detect).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def _run() -> None:
    import jax

    if _MULTIHOST.value:
        if os.environ.get("MMDIT_CPU_COLLECTIVES"):
            jax.config.update("jax_cpu_collectives_implementation", os.environ["MMDIT_CPU_COLLECTIVES"])
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    from mmdit_jax import commands
    from mmdit_jax.config_schema import validate_config

    config = _CONFIG.value
    validate_config(config)
    report(f"process {jax.process_index()}/{jax.process_count()}, {jax.device_count()} devices "
           f"({jax.devices()[0].platform}), mode={_MODE.value}, workdir={_WORKDIR.value}")
    if _MODE.value == "train":
        commands.train(config, _WORKDIR.value)
    elif _MODE.value == "export_lora":
        commands.export_lora(config, _WORKDIR.value, _OUT.value)
    elif _MODE.value == "sample":
        commands.sample(config, _WORKDIR.value, _PROMPTS.value, allow_untrained=_UNTRAINED.value)
    else:
        print(commands.evaluate(config, _WORKDIR.value, allow_untrained=_UNTRAINED.value))


def run() -> None:
    """The ``mmdit-jax`` console script and ``python -m mmdit_jax``."""
    run_command(_run)


if __name__ == "__main__":
    run()
