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

A name not in ``FAMILIES`` is looked up in the installed distributions' entry points of group
``mmdit_jax.families`` (``name = "module:Class"``), read once on the first such lookup (``docs/plugins.md``).
``plugin_module(name)`` is the module a fresh process must import to find a family defined outside the package;
a training run records it in its workdir (``mmdit_jax.config_schema.workdir_config``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Any, Mapping

import ml_collections

from mmdit_jax.checks import ConfigError, check_choice
from mmdit_jax.families.base import Conditioning, Family

__all__ = ["ENTRY_POINT_GROUP", "FAMILIES", "Conditioning", "Family", "build_family", "family_config",
           "family_names", "get_family", "model_config", "plugin_module", "register_family", "reset_entry_points"]

# name -> the Family subclass, or "module:attribute" imported on first use.
FAMILIES: dict[str, Any] = {
    "sd3": "mmdit_jax.families.sd3:SD3Family",
    "mlp": "mmdit_jax.families.mlp:MLPFamily",
    "flux": "mmdit_jax.families.flux:FluxFamily",
}


ENTRY_POINT_GROUP = "mmdit_jax.families"

# Entry points of ENTRY_POINT_GROUP by name, read on the first lookup of a name not in FAMILIES (reading every
# installed distribution's metadata costs tens of milliseconds, so built-in names never trigger it); a loaded
# entry is replaced by its class. Kept apart from FAMILIES so that ``reset_entry_points`` forgets all of it.
_entry_points: dict[str, importlib.metadata.EntryPoint | type[Family]] | None = None


def register_family(name: str, family: type[Family]) -> type[Family]:
    """Add a family under ``name`` (a second registration of the same class is a no-op). A workdir trained with it
    records ``family.__module__`` (``plugin_module``), so define and register the class in one importable module."""
    existing = FAMILIES.get(name)
    if existing is not None and existing is not family:
        raise ConfigError(f"model family {name!r} is already registered ({existing})")
    FAMILIES[name] = family
    return family


def reset_entry_points() -> None:
    """Forget the entry points read so far: the next lookup of a name not in ``FAMILIES`` reads the installed
    distributions again (after installing a plug-in into a running process, or between tests)."""
    global _entry_points
    _entry_points = None


def _plugins() -> dict[str, importlib.metadata.EntryPoint | type[Family]]:
    global _entry_points
    if _entry_points is None:
        found: dict[str, importlib.metadata.EntryPoint | type[Family]] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name, ep)   # two distributions declaring one name: the first on sys.path wins
        _entry_points = found
    return _entry_points


def _load(ep: importlib.metadata.EntryPoint) -> type[Family]:
    dist = f" of distribution {ep.dist.name!r}" if getattr(ep, "dist", None) is not None else ""
    where = f"entry point {ep.name} = {ep.value!r}{dist} (group {ENTRY_POINT_GROUP!r})"
    try:
        cls = ep.load()
    except Exception as e:  # noqa: BLE001  (any failure of third-party code becomes one line naming the plug-in)
        raise ConfigError(f"model family {ep.name!r}: {where} failed to load: {type(e).__name__}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise ConfigError(f"model family {ep.name!r}: {where} is {cls!r}, not a subclass of mmdit_jax.families.Family")
    return cls


def family_names() -> list[str]:
    """Every valid ``model.name``: the registry's and the entry points' (reading the entry points)."""
    return sorted(set(FAMILIES) | set(_plugins()))


def get_family(name: str) -> type[Family]:
    """The family class registered as ``name``: ``FAMILIES`` first, then the entry points of ``ENTRY_POINT_GROUP``."""
    if name not in FAMILIES:
        plugins = _plugins()
        check_choice("model.name", name, family_names())
        entry = plugins[name]
        if not isinstance(entry, type):
            entry = plugins[name] = _load(entry)
        return entry
    entry = FAMILIES[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = FAMILIES[name] = getattr(importlib.import_module(module), attr)
    return entry


def plugin_module(name: str) -> str | None:
    """The module that defines family ``name`` when it comes from outside the package (``None`` for a family of
    ``mmdit_jax``): importing it in a fresh process makes ``name`` valid again (it registers the family, or its
    distribution's entry point finds it)."""
    module = get_family(name).__module__
    return None if module == "mmdit_jax" or module.startswith("mmdit_jax.") else module


def _fields(config: Any) -> dict[str, Any]:
    d = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    if "name" not in d:
        raise ConfigError(f"the model section needs a name; choose one of {family_names()}")
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
