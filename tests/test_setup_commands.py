"""The two set-up commands of README.md: `.ci/run` runs exactly the test command, and the main command names a config
file and entry point that exist."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_commands() -> list[str]:
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    _, tests = _setup_commands()
    ci = [line.strip() for line in open(os.path.join(ROOT, ".ci", "run")) if line.strip() and not line.startswith("#")]
    assert ci[-1] == tests, (ci[-1], tests)
    assert tests.startswith('pip install -e ".[test]" && python -m pytest')


def test_main_command_names_an_existing_config_and_entry_point():
    main, _ = _setup_commands()
    assert main.startswith("pip install -e . && python -m mmdit_jax ")
    config = re.search(r"--config=(\S+?)(?::\S+)?(?:\s|$)", main).group(1)
    assert os.path.exists(os.path.join(ROOT, config)), config
    assert os.path.exists(os.path.join(ROOT, "mmdit_jax", "__main__.py"))
    assert "--workdir=" in main
