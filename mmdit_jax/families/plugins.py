"""The plug-in record of a workdir: ``<workdir>/plugins.json`` beside ``config.json``, ``{"families": {model.name:
module}}`` for the families defined outside the package, the modules a fresh process imports before the config's
names can resolve (docs/plugins.md).
"""

from __future__ import annotations

import os
from typing import Any

from mmdit_jax.checks import ConfigError

PLUGINS_FILE = "plugins.json"


def save_workdir_plugins(workdir: str, config: Any) -> None:
    """Record in ``<workdir>/plugins.json`` the module of the run's model family when it is defined outside the
    package; with none, no file (and a stale one is removed)."""
    import json

    from mmdit_jax.families import plugin_module
    from mmdit_jax.reporting import report, write_text_atomic

    families = {}
    module = plugin_module(config.model.name)
    if module == "__main__":
        # importing "__main__" elsewhere gives that process's own script: nothing to record
        report(f"model family {config.model.name!r} is defined in the __main__ script: other commands cannot find "
               "it from this workdir; define it in an importable module (docs/plugins.md)")
    elif module is not None:
        families[config.model.name] = module
    path = os.path.join(workdir, PLUGINS_FILE)
    if families:
        write_text_atomic(path, json.dumps({"families": families}, indent=1, sort_keys=True))
    elif os.path.exists(path):
        os.remove(path)


def import_workdir_plugins(workdir: str) -> None:
    """Import the modules ``<workdir>/plugins.json`` records (none without the file), so that the names in the
    workdir's config resolve; a module that cannot be imported is a one-line ``ConfigError`` naming it."""
    import importlib
    import json

    path = os.path.join(workdir, PLUGINS_FILE)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict) or not all(isinstance(v, dict) for v in record.values()):
        raise ConfigError(f"{path} is not a plug-in record: expected {{\"families\": {{name: module}}}}")
    for kind, modules in sorted(record.items()):
        label = {"families": "model family"}.get(kind, f"{kind} entry")
        for name, module in sorted(modules.items()):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(
                    f"{path} records module {module!r} for {label} {name!r}, and it cannot be imported "
                    f"({type(e).__name__}: {e}): install the package that provides it or put its folder on "
                    "PYTHONPATH") from e
