"""The command harness every entry point runs on: ``python -m mmdit_jax``, ``mmdit_jax.generate``,
``mmdit_jax.edit``, ``mmdit_jax.train_autoencoder`` and the study experiments (``mmdit_jax.study.cli``).

Flag every command takes (defined here, once):

* ``--tuned_runtime`` (default true; ``--notuned_runtime`` or ``--tuned_runtime=false`` turns it off): apply
  ``mmdit_jax.runtime.configure_runtime()`` before the first JAX computation.

``run_command(body)`` parses the flags (absl) and then, in this order:

1. rejects positional arguments: a usage message on stderr, exit status 1 (as absl's own flag errors);
2. applies the tuned runtime (unless turned off), then keeps library logs at WARNING unless ``--verbosity`` is given
   (``reporting.quiet_library_logs``);
3. runs ``body()``; an input error (``ConfigError``, ``CheckpointError`` unless told otherwise) becomes one line
   ``error: ...`` on stderr and exit status 2 (``reporting.exit_on_input_error``; ``--verbosity=1`` shows the
   traceback instead).

A config-file flag (``ml_collections`` ``DEFINE_config_file``, e.g. ``--config``) naming a file that does not exist is
such an input error too: ``error: --config=PATH: config file 'PATH' does not exist``, exit status 2.

Command-specific flags (``--config``, ``--workdir``, the multi-host flags of training, ...) stay with their command.
This module imports no JAX, Orbax or pipeline code at import time.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from absl import app, flags

from mmdit_jax.checks import ConfigError
from mmdit_jax.reporting import exit_on_input_error, quiet_library_logs
from mmdit_jax.runtime import configure_runtime

TUNED_RUNTIME = flags.DEFINE_bool(
    "tuned_runtime", True, "Apply mmdit_jax.runtime's per-platform process settings before the first JAX "
    "computation (CPU: host malloc and XLA:CPU multi-output fusion; NVIDIA GPU: cuBLAS for every GEMM).")

InputErrors = tuple[type[BaseException], ...]


def default_input_errors() -> InputErrors:
    """``(ConfigError, CheckpointError)``: a bad flag or config value, a missing or unreadable checkpoint."""
    from mmdit_jax.checkpoints import CheckpointError  # imports JAX and Orbax: only once a command runs

    return ConfigError, CheckpointError


def command_main(body: Callable[[], Any], *,
                 input_errors: InputErrors | None = None) -> Callable[[Sequence[str]], None]:
    """The ``main(argv)`` that ``absl.app.run`` calls for ``body`` (steps 1 to 3 of the module docstring).

    ``input_errors``: the exception types that are the user's input (default: ``default_input_errors()``).
    ``body``'s return value is dropped: ``absl.app.run`` would make it the exit status.
    """

    def main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
        if TUNED_RUNTIME.value:  # before the first JAX computation: later settings have no effect
            configure_runtime()
        quiet_library_logs()
        exit_on_input_error(body, default_input_errors() if input_errors is None else input_errors)

    return main


def run_command(body: Callable[[], Any], *, input_errors: InputErrors | None = None) -> None:
    """Parse ``sys.argv`` and run ``body`` as the command; exits the process (status 0 when ``body`` returns).

    See the module docstring for what happens around ``body``; ``input_errors`` as in ``command_main``.
    """
    app.run(command_main(body, input_errors=input_errors), flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a missing config file reported as an input error. ml_collections defers a config file's
    load error to the first use of the config (a multi-line traceback), or raises it while parsing when
    ``--config.a.b=...`` overrides follow."""
    try:
        rest = app.parse_flags_with_usage(argv)
    except OSError:
        exit_on_input_error(lambda: _check_config_files(argv), (ConfigError,))
        raise
    exit_on_input_error(lambda: _check_config_files(argv), (ConfigError,))
    return rest


def _check_config_files(argv: Sequence[str]) -> None:
    """Raise ``ConfigError`` for the first config-file flag in ``argv`` whose file does not exist."""
    config_flags = sys.modules.get("ml_collections.config_flags.config_flags")
    if config_flags is None:  # not imported: no config-file flag is defined
        return
    names = {name for name in flags.FLAGS if isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser)}
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":  # absl parses no flag after it
            return
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in names:
            continue
        if not equals:  # the value is the next argument: --config PATH
            value = args[i + 1] if i + 1 < len(args) else ""
        path = value.split(":", 1)[0]          # PATH[:argument of get_config]
        if not os.path.isfile(path):
            raise ConfigError(f"--{name}={value}: config file {path!r} does not exist")
