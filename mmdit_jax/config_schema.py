"""The experiment config's entry points: ``validate_config`` (start-up validation: unknown keys and invalid values
are rejected with the field name and the valid choices, before any data is generated or any model compiled;
defined in ``mmdit_jax.train.schema`` with the sections, ``SCHEMA``), ``model_config`` and ``workdir_config``.
"""

from __future__ import annotations

import os
from typing import Any

from mmdit_jax.checks import ConfigError
from mmdit_jax.train.schema import OPTIONAL, SCHEMA, validate_config


def model_config(config: Any) -> Any:
    """The run's model config dataclass as the family uses it (e.g. adjusted for a forward-mode loss)."""
    from mmdit_jax.components.from_config import family_from_config

    return family_from_config(config).config


def workdir_config(workdir: str) -> Any:
    """The config a training run saved as ``<workdir>/config.json``, validated, after importing the plug-in
    modules recorded in ``<workdir>/plugins.json`` (``mmdit_jax.families.plugins``)."""
    import json

    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir} has no config.json: it is not a training workdir of `python -m mmdit_jax`")
    from mmdit_jax.families.plugins import import_workdir_plugins

    import_workdir_plugins(workdir)
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    # Data options added after the run was made are filled with their defaults (which keep the old behaviour), so
    # older workdirs keep loading.
    if "data" in config and "name" in config.data:
        from mmdit_jax.data.registry import dataset_spec

        for key, value in dataset_spec(config.data.name).fields.items():
            if key not in config.data:
                config.data[key] = value
    validate_config(config)
    return config


__all__ = ["OPTIONAL", "SCHEMA", "model_config", "validate_config", "workdir_config"]
