"""Model families by name: ``model.name`` in a config picks one (``base.Family`` says what a family owns).

=========  ==============================================  ===================================
name       model                                           conditioning
=========  ==============================================  ===================================
``sd3``    the SD3 / SD3.5 MMDiT (``models/mmdit.py``)     ``context``, ``pooled``
``flux``   FLUX.1 double/single-stream + RoPE              ``context``, ``pooled``, ``guidance``
           (``models/flux.py``)
``mlp``    noise-conditional MLP for vector data (2D toy)  none
=========  ==============================================  ===================================

Adding a family is its own module with a ``Family`` subclass and one registry line: an entry in
``FAMILIES`` below, or ``register_family(name, cls)`` from any module (a config file may import it).
Config files take the ``model`` section from the family's config dataclass: ``family_config("sd3", **overrides)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

import ml_collections

from mmdit_jax.checks import ConfigError, check_choice
from mmdit_jax.families.base import Conditioning, Family

__all__ = ["FAMILIES", "Conditioning", "Family", "build_family", "family_config", "get_family", "model_config",
           "register_family"]

# name -> the Family subclass, or "module:attribute" imported on first use.
FAMILIES: dict[str, Any] = {
    "sd3": "mmdit_jax.families.sd3:SD3Family",
    "mlp": "mmdit_jax.families.mlp:MLPFamily",
    "flux": "mmdit_jax.families.flux:FluxFamily",
}


def register_family(name: str, family: type[Family]) -> type[Family]:
    """Add a family under ``name`` (a second registration of the same class is a no-op)."""
    existing = FAMILIES.get(name)
    if existing is not None and existing is not family:
        raise ConfigError(f"model family {name!r} is already registered ({existing})")
    FAMILIES[name] = family
    return family


def get_family(name: str) -> type[Family]:
    """The family class registered as ``name``."""
    check_choice("model.name", name, FAMILIES)
    entry = FAMILIES[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = FAMILIES[name] = getattr(importlib.import_module(module), attr)
    return entry


def _fields(config: Any) -> dict[str, Any]:
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    if "name" not in d:
        raise ConfigError(f"the model section needs a name; choose one of {sorted(FAMILIES)}")
    return d


def family_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """A ``model`` config section: ``name`` and every field of the family's config dataclass, its defaults
    replaced by ``overrides`` (unknown fields rejected)."""
    cls = get_family(name)
    defaults = {f.name: getattr(cls.Config(), f.name) for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"model ({name}) has unknown keys {unknown}; valid keys are {sorted(defaults)}")
    section = {"name": name, **defaults, **overrides}
    # A field left at None (e.g. attention_impl: picked per platform) is a typed placeholder, so that
    # ``--config.model.<field>=...`` can set it from the command line (ml_collections refuses to retype a plain None).
    for f in dataclasses.fields(cls.Config):
        if section[f.name] is None:
            kind = next((t for t in (bool, int, float, str) if t.__name__ in str(f.type)), None)
            if kind is not None:
                section[f.name] = ml_collections.config_dict.placeholder(kind)
    return ml_collections.ConfigDict(section)


def model_config(config: Mapping[str, Any]) -> Any:
    """The ``model`` section as its family's validated config dataclass."""
    fields = _fields(config)
    return get_family(fields.pop("name")).config_from_dict(fields)


def build_family(config: Mapping[str, Any], schedule: Any, timestep_scale: float = 1.0,
                 forward_mode: bool = False) -> Family:
    """The family instance of a ``model`` section: validated config, the run's schedule and time scale.
    ``forward_mode``: the loss differentiates the network forward (``jax.jvp``)."""
    fields = _fields(config)
    cls = get_family(fields.pop("name"))
    return cls(cls.config_from_dict(fields), schedule, timestep_scale, forward_mode)
