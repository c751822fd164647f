"""The command harness every entry point runs on: ``python -m mmdit_jax``, ``mmdit_jax.generate``,
``mmdit_jax.edit``, ``mmdit_jax.train_autoencoder`` and the study experiments (``mmdit_jax.study.cli``).

Flag every command takes (defined here, once):

* ``--tuned_runtime`` (default true; ``--notuned_runtime`` or ``--tuned_runtime=false`` turns it off): apply
  ``mmdit_jax.runtime.configure_runtime()`` before the first JAX computation.

``run_command(body)`` parses the flags (absl) and then, in this order:

1. turns every error of the command line into one line ``error: ...`` on stderr and exit status 2: absl's own
   (an unknown flag, a value of the wrong type, a missing required flag), a positional argument, a config file
   that does not exist or fails to load (a mistyped ``:arg``), an unknown ``--config.*`` key (the valid keys
   named). Config files load wherever they are: the folder above a config file's folder goes on ``sys.path``, so
   ``configs/x.py`` importing ``configs.y`` works from any working directory;
2. applies the tuned runtime (unless turned off), then keeps library logs at WARNING unless ``--verbosity`` is given
   (``reporting.quiet_library_logs``);
3. runs ``body()``; an input error (``ConfigError``, ``CheckpointError`` unless told otherwise) becomes one line
   ``error: ...`` on stderr and exit status 2 (``reporting.exit_on_input_error``; ``--verbosity=1`` shows the
   traceback instead).

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
    """absl's parser, with every error in the command line (an unknown flag, a bad value, a missing required flag, a
    config file that is missing or fails to load, an unknown ``--config.*`` key, a positional argument) as one line
    ``error: ...`` and exit status 2 (``--verbosity=1`` raises it instead)."""
    _put_config_roots_on_path(argv)
    verbose = _verbose(argv)

    def parse() -> list[str]:
        _check_config_files(argv)
        try:
            rest = flags.FLAGS(argv)
            _load_config_files()
        except (flags.Error, KeyError, AttributeError, TypeError, ValueError, ImportError, SyntaxError) as e:
            if verbose:
                raise
            raise ConfigError(_flag_error_line(e, argv)) from e
        if len(rest) > 1:
            raise ConfigError(f"unexpected arguments {list(rest[1:])}: every argument is a --flag=value")
        return rest

    if verbose:
        return parse()
    return exit_on_input_error(parse, (ConfigError,))


def _verbose(argv: Sequence[str]) -> bool:
    """Whether ``--verbosity`` (``-v``) >= 1 is on the command line: read before absl parses it."""
    for arg in argv[1:]:
        name, _, value = arg.lstrip("-").partition("=")
        if name in ("verbosity", "v"):
            try:
                return int(value) >= 1
            except ValueError:
                return False
    return False


def _config_flag_names() -> set[str]:
    config_flags = sys.modules.get("ml_collections.config_flags.config_flags")
    if config_flags is None:  # not imported: no config-file flag is defined
        return set()
    return {name for name in flags.FLAGS if isinstance(flags.FLAGS[name].parser, config_flags.ConfigFileFlagParser)}


def _config_flag_values(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``(name, value)`` of each config-file flag on the command line (``--config=PATH[:arg]``)."""
    names, args, found = _config_flag_names(), list(argv[1:]), []
    for i, arg in enumerate(args):
        if arg == "--":  # absl parses no flag after it
            break
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in names:
            continue
        if not equals:  # the value is the next argument: --config PATH
            value = args[i + 1] if i + 1 < len(args) else ""
        found.append((name, value))
    return found


def _put_config_roots_on_path(argv: Sequence[str]) -> None:
    """Config files import their siblings as ``configs.<name>`` (the folder is a package of the repository root):
    make that import work wherever the file is and whatever the working directory, by putting the folder above the
    config file's folder on ``sys.path`` (last: it never shadows an installed module)."""
    for _, value in _config_flag_values(argv):
        path = value.split(":", 1)[0]
        if os.path.isfile(path):
            root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
            if root not in sys.path:
                sys.path.append(root)


def _check_config_files(argv: Sequence[str]) -> None:
    """Raise ``ConfigError`` for the first config-file flag in ``argv`` whose file does not exist."""
    for name, value in _config_flag_values(argv):
        path = value.split(":", 1)[0]          # PATH[:argument of get_config]
        if not os.path.isfile(path):
            raise ConfigError(f"--{name}={value}: config file {path!r} does not exist")


def _load_config_files() -> None:
    """Load the config files given on the command line now (ml_collections may defer it to the first use)."""
    for name in _config_flag_names():
        if flags.FLAGS[name].present:
            flags.FLAGS[name].value  # noqa: B018 (loads the file)


def _flag_error_line(error: BaseException, argv: Sequence[str]) -> str:
    """One line for an error of the command line, naming the flag and, for a ``--config.*`` key, the valid keys."""
    override = _unknown_override(argv)
    if override is not None:
        return override
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Error whilst parsing config file" in text:
        # ml_collections puts the config file's traceback in the message: its last line is the exception
        exception = [line for line in lines if not line.startswith(("File ", "Traceback", "^", "~", "Pass --"))]
        return f"{lines[0].split(': Error whilst')[0].removeprefix('flag ')}: {exception[-1]}"
    return lines[0] if lines else type(error).__name__


def _unknown_override(argv: Sequence[str]) -> str | None:
    """The message for the first ``--<config>.a.b=value`` whose key is not in the loaded config, naming the valid keys
    at the level where the key is missing; None if every override's key exists (or no config is loaded)."""
    import ml_collections

    for name, value in _config_flag_values(argv):
        try:  # the file as get_config returns it (the flag's value may be the override that failed)
            config = flags.FLAGS[name].parser.parse(value)
        except Exception:  # the config itself failed to load: reported as that
            return None
        if not isinstance(config, ml_collections.ConfigDict):
            continue
        for arg in argv[1:]:
            key, _, _ = arg.lstrip("-").partition("=")
            if not arg.startswith("-") or not key.startswith(name + "."):
                continue
            node, path = config, name
            for part in key[len(name) + 1:].split("."):
                if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
                    valid = sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
                    hint = f"valid keys of {path}: {valid}" if valid else f"{path} is a value, not a section"
                    return f"--{key}: unknown config key {part!r}; {hint}"
                node, path = node[part], f"{path}.{part}"
    return None
