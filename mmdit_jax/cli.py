"""``mmdit-jax`` / ``python -m mmdit_jax``: ``--config=configs/<file>.py[:arg] --workdir=DIR
--mode=train|sample|eval|export_lora``.

Override any field with ``--config.a.b=value``; a missing config file, unknown keys and invalid values are rejected
at start with one line naming the flag or field (exit status 2; the traceback too with ``--verbosity=1``).
A workdir remembers its config (``<workdir>/config.json``): without ``--config``, every mode reads it (a resumed
run too); with ``--config``, fields that change the model's shapes must agree with it (the differing fields are
listed otherwise), and other differences are reported. ``sample`` and ``eval`` need a checkpoint in the workdir
(``--allow_untrained`` samples the initialisation instead); ``sample`` writes ``samples/sample_step_<N>.png`` and
refuses to replace one unless ``--overwrite`` (as ``export_lora`` its file). Prompts for ``sample``: ``--prompt``
(repeatable, commas kept), ``--prompt_file`` (one a line) or ``--prompts`` (comma-separated).
Multi-host: pass ``--multihost`` (SLURM / TPU pods auto-detect; otherwise set ``--coordinator``,
``--num_processes`` and ``--process_id``) and every process runs the same command.
``--notuned_runtime`` skips ``mmdit_jax.runtime``'s process settings; the flags and error handling every command
shares are in ``mmdit_jax.harness``. What each command refuses: docs/errors.md.
"""

from __future__ import annotations

import os
from typing import Any

from absl import flags
from ml_collections import config_flags

from mmdit_jax.checks import ConfigError, check_finite_values, read_prompt_file
from mmdit_jax.harness import run_command
from mmdit_jax.reporting import report

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]); default: "
                                          "the workdir's config.json.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "export_lora"], "What to run.")
_OUT = flags.DEFINE_string("out", None, "--mode=export_lora: output folder or .safetensors file (default "
                           "<workdir>/lora_export).")
_PROMPTS = flags.DEFINE_list("prompts", None, "--mode=sample: comma-separated prompts (default: "
                             "config.sample.prompts); a prompt with a comma: --prompt or --prompt_file.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "--mode=sample: a prompt (repeat the flag for several).")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "--mode=sample: a text file, one prompt a line.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "--mode=sample|export_lora: replace an existing output file.")
_UNTRAINED = flags.DEFINE_bool("allow_untrained", False, "--mode=sample|eval on a workdir without a checkpoint: use "
                               "the untrained initialisation instead of failing.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host without auto-detect).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["workdir"])

# Flags that only one mode reads: given with another mode, they are refused rather than ignored.
_MODE_FLAGS = {"out": ("export_lora",), "prompts": ("sample",), "prompt": ("sample",), "prompt_file": ("sample",),
               "overwrite": ("sample", "export_lora"), "allow_untrained": ("sample", "eval")}


def _check_flags() -> None:
    """What needs neither JAX nor the config: flags of another mode, the workdir being a folder."""
    for name, modes in _MODE_FLAGS.items():
        if flags.FLAGS[name].present and _MODE.value not in modes:
            raise ConfigError(f"--{name} applies to --mode={'|'.join(modes)}, not --mode={_MODE.value}")
    workdir = _WORKDIR.value
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir!r} is a file; give a folder (a new one to train, or a trained run's)")


def _sample_prompts() -> list[str] | None:
    """The prompts of ``--prompt``, ``--prompt_file`` and ``--prompts`` in that order (None: the config's)."""
    prompts = list(_PROMPT.value) + list(_PROMPTS.value or [])
    if _PROMPT_FILE.value is not None:
        prompts += read_prompt_file("--prompt_file", _PROMPT_FILE.value)
    given = any(flags.FLAGS[n].present for n in ("prompt", "prompts", "prompt_file"))
    if given and not [p for p in prompts if p.strip()]:
        raise ConfigError("--prompt / --prompts / --prompt_file gave no prompt; drop them to use "
                          "config.sample.prompts")
    return prompts or None


def _config() -> Any:
    from mmdit_jax.commands import run_config
    from mmdit_jax.config_schema import validate_config

    given = _CONFIG.value
    if given is not None:
        check_finite_values("", given)
        validate_config(given)
    return run_config(given, _WORKDIR.value, _MODE.value)


def _run() -> None:
    _check_flags()
    prompts = _sample_prompts() if _MODE.value == "sample" else None
    import jax

    if _MULTIHOST.value:
        if os.environ.get("MMDIT_CPU_COLLECTIVES"):
            jax.config.update("jax_cpu_collectives_implementation", os.environ["MMDIT_CPU_COLLECTIVES"])
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    from mmdit_jax import commands

    config = _config()
    report(f"process {jax.process_index()}/{jax.process_count()}, {jax.device_count()} devices "
           f"({jax.devices()[0].platform}), mode={_MODE.value}, workdir={_WORKDIR.value}")
    if _MODE.value == "train":
        commands.train(config, _WORKDIR.value)
    elif _MODE.value == "export_lora":
        commands.export_lora(config, _WORKDIR.value, _OUT.value, overwrite=_OVERWRITE.value)
    elif _MODE.value == "sample":
        commands.sample(config, _WORKDIR.value, prompts, allow_untrained=_UNTRAINED.value,
                        overwrite=_OVERWRITE.value)
    else:
        commands.evaluate(config, _WORKDIR.value, allow_untrained=_UNTRAINED.value)   # reports its result


def run() -> None:
    """The ``mmdit-jax`` console script and ``python -m mmdit_jax``."""
    run_command(_run)


if __name__ == "__main__":
    run()
