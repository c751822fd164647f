"""Model families from outside the package: found through the ``mmdit_jax.families`` entry points of an installed
distribution (read lazily, once, resettable), and recorded in a training workdir so that a fresh process that only
has the workdir imports the registering module before validating ``config.json``."""

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from mmdit_jax import families
from mmdit_jax.checks import ConfigError
from mmdit_jax.families import FAMILIES, family_config, get_family, plugin_module, reset_entry_points

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAMILY_SOURCE = '''
from mmdit_jax.families import register_family
from mmdit_jax.families.mlp import MLPFamily


class {cls}(MLPFamily):
    name = "{name}"

{register}
NOT_A_FAMILY = 3
'''


@pytest.fixture
def clean_plugins(monkeypatch):
    """Forget entry points, plug-in families and plug-in modules around the test (none leaks into the next)."""
    added = []

    def forget(name: str, *modules: str) -> None:
        added.append((name, modules))

    reset_entry_points()
    yield forget
    reset_entry_points()
    for name, modules in added:
        FAMILIES.pop(name, None)
        for module in modules:
            sys.modules.pop(module, None)


def test_entry_points_name_families_read_lazily_once(tmp_path, monkeypatch, clean_plugins):
    clean_plugins("ep_mlp", "mmdit_ep_plugin", "mmdit_ep_plugin.family")
    package = tmp_path / "mmdit_ep_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "family.py").write_text(FAMILY_SOURCE.format(cls="EntryPointMLPFamily", name="ep_mlp", register=""))
    dist = tmp_path / "mmdit_ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mmdit-ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mmdit_jax.families]\nep_mlp = mmdit_ep_plugin.family:EntryPointMLPFamily\n"
                                           "ep_bad = mmdit_ep_plugin.family:NOT_A_FAMILY\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    reads = []
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: reads.append(kw) or real(**kw))

    assert get_family("mlp").__name__ == "MLPFamily"
    assert reads == []                        # a built-in name never reads the installed distributions

    cls = get_family("ep_mlp")
    assert cls.__name__ == "EntryPointMLPFamily" and cls.__module__ == "mmdit_ep_plugin.family"
    assert "ep_mlp" not in FAMILIES           # kept apart from the registry, so a reset forgets it
    assert family_config("ep_mlp", hidden=8).hidden == 8
    assert plugin_module("ep_mlp") == "mmdit_ep_plugin.family" and plugin_module("mlp") is None
    with pytest.raises(ConfigError) as e:
        get_family("no_such_family")
    message = str(e.value)
    assert "model.name='no_such_family' is not valid" in message
    assert "'ep_mlp'" in message and "'mlp'" in message and "'sd3'" in message
    with pytest.raises(ConfigError, match="ep_bad.*not a subclass of mmdit_jax.families.Family"):
        get_family("ep_bad")
    assert reads == [{"group": "mmdit_jax.families"}]    # read once for all the lookups above

    (dist / "entry_points.txt").write_text("")          # the plug-in is uninstalled ...
    assert get_family("ep_mlp") is cls                  # ... but this process read it already
    reset_entry_points()
    with pytest.raises(ConfigError, match="ep_mlp.*is not valid"):
        get_family("ep_mlp")
    assert len(reads) == 2


def _workdir_config(workdir: str, pythonpath: list[str]) -> subprocess.CompletedProcess:
    code = ("from mmdit_jax.config_schema import workdir_config\n"
            "from mmdit_jax.families import get_family\n"
            f"cfg = workdir_config({workdir!r})\n"
            "cls = get_family(cfg.model.name)\n"
            "print('FAMILY', cfg.model.name, cls.__module__, cls.__name__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    # cwd is not the plug-in's folder: ``python -c`` puts the working directory on sys.path
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_workdir_records_the_plugin_module_that_a_fresh_process_imports(tmp_path, monkeypatch, clean_plugins):
    from configs.toy2d import get_config
    from mmdit_jax.families.plugins import PLUGINS_FILE
    from mmdit_jax.train import loop

    clean_plugins("wd_mlp", "mmdit_wd_plugin")
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    register = 'register_family("wd_mlp", WorkdirMLPFamily)'
    (plugin_dir / "mmdit_wd_plugin.py").write_text(FAMILY_SOURCE.format(cls="WorkdirMLPFamily", name="wd_mlp",
                                                                        register=register))
    monkeypatch.syspath_prepend(str(plugin_dir))
    importlib.import_module("mmdit_wd_plugin")    # what the config file's import does in the training process

    cfg = get_config("tiny")
    cfg.model = family_config("wd_mlp", hidden=16, depth=2, sigma_data=4.0)
    cfg.data.update(num_train=256, num_test=64, batch_size=32)
    cfg.train.update(num_steps=2, log_every=2, checkpoint_every=2, sample_every=0, async_checkpointing=False)
    workdir = str(tmp_path / "run")
    assert loop.train(cfg, workdir)["last_step"] == 2

    with open(os.path.join(workdir, PLUGINS_FILE)) as f:
        assert json.load(f) == {"families": {"wd_mlp": "mmdit_wd_plugin"}}
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]

    found = _workdir_config(workdir, [str(plugin_dir), *pythonpath])
    assert found.returncode == 0, found.stderr[-3000:]
    assert "FAMILY wd_mlp mmdit_wd_plugin WorkdirMLPFamily" in found.stdout

    missing = _workdir_config(workdir, pythonpath)
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("mmdit_jax.checks.ConfigError: ")
    message = last.removeprefix("mmdit_jax.checks.ConfigError: ")
    assert "'mmdit_wd_plugin'" in message and "model family 'wd_mlp'" in message
    assert os.path.join(workdir, PLUGINS_FILE) in message and "PYTHONPATH" in message


def test_a_workdir_of_a_builtin_family_records_nothing(tmp_path):
    from configs.toy2d import get_config
    from mmdit_jax.families.plugins import PLUGINS_FILE, import_workdir_plugins, save_workdir_plugins

    stale = tmp_path / PLUGINS_FILE
    stale.write_text(json.dumps({"families": {"gone": "mmdit_no_such_plugin_module"}}))
    with pytest.raises(ConfigError, match="mmdit_no_such_plugin_module.*cannot be imported.*install"):
        import_workdir_plugins(str(tmp_path))
    save_workdir_plugins(str(tmp_path), get_config("tiny"))   # model.name="mlp": built in
    assert not stale.exists()
    import_workdir_plugins(str(tmp_path))                      # no record: nothing to import
    assert families.plugin_module("mlp") is None
