"""Start-up validation helpers: every error names the field and what would be valid."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A configuration value or argument is invalid; the message names the field and valid values."""


def check_choice(field: str, value: Any, choices: Iterable[str] | Mapping[str, Any]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    valid = sorted(choices)
    if value not in valid:
        raise ConfigError(f"{field}={value!r} is not valid; choose one of {valid}")


def check_positive(field: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is a finite number > 0."""
    try:
        ok = float(value) > 0 and float(value) != float("inf")
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{field} must be a positive number, got {value!r}")


def check_positive_int(field: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field} must be an integer >= 1, got {value!r}")


def check_less(field_lo: str, lo: float, field_hi: str, hi: float) -> None:
    """Raise ConfigError unless ``lo < hi``."""
    if not float(lo) < float(hi):
        raise ConfigError(f"{field_lo} ({lo}) must be smaller than {field_hi} ({hi})")


def check_keys(field: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Raise ConfigError if ``given`` has keys outside ``allowed`` (catches config typos)."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{field} has unknown keys {unknown}; valid keys are {sorted(allowed)}")


def check_number(field: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``;
    a bound of None is no bound). ``None`` values are not checked: they stand for a default."""
    if value is None:
        return
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f"<= {high:g}"
    valid = " and ".join(b for b in (lo, hi) if b) or "any finite number"
    if not math.isfinite(x):
        raise ConfigError(f"{field}={value!r} is not a finite number; valid: {valid}")
    if (low is not None and (x <= low if low_open else x < low)) or (high is not None and x > high):
        raise ConfigError(f"{field}={value!r} is out of range; valid: {valid}")


def check_output_folder(flag: str, folder: str) -> None:
    """Raise ConfigError if ``folder`` exists as something other than a folder (it is created later, when the first
    output is written)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{flag}={folder!r} is an existing file; give a folder (new or existing)")


def check_new_outputs(flag: str, paths: Iterable[str], overwrite: bool) -> None:
    """Raise ConfigError if one of ``paths`` exists, unless ``overwrite``: no command replaces an output silently."""
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ConfigError(f"{flag}: {existing[0]!r}{more} exists; pass --overwrite to replace it")


def read_prompt_file(flag: str, path: str) -> list[str]:
    """The prompts of a text file, one a line (blank lines and ``#`` comments skipped); commas stay in a prompt."""
    if not os.path.isfile(path):
        raise ConfigError(f"{flag}={path!r} does not exist; give a text file, one prompt a line")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{flag}={path!r} is not a readable UTF-8 text file ({type(e).__name__})") from e
    return [line for line in lines if line and not line.startswith("#")]


def check_finite_values(name: str, config: Any) -> None:
    """Raise ConfigError naming the first float of a (nested) config that is NaN or infinite: no config field means
    either, and a NaN passes every range check by comparing false."""
    if isinstance(config, Mapping) or hasattr(config, "items"):
        for key, value in config.items():
            check_finite_values(f"{name}.{key}" if name else str(key), value)
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_finite_values(f"{name}[{i}]", value)
    elif isinstance(config, float) and not math.isfinite(config):
        raise ConfigError(f"{name}={config!r} is not a finite number")
