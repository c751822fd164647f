"""Start-up validation helpers: every error names the field and what would be valid."""

from __future__ import annotations

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
