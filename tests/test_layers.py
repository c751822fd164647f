"""The package's layers and what may import what (README, "Layout"): a module imports only from its own
sub-package and from lower layers, so the maths never depends on models, models never on training, and
inference never on training state."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mmdit_jax"

# Lowest first. A sub-package (or top-level module) may import from strictly lower layers only.
LAYERS = [
    {"checks", "runtime", "reporting"},
    {"diffusion", "data", "checkpoints"},
    {"models", "adapters"},
    {"interop"},
    {"families", "eval"},
    {"components"},
    {"setup"},
    {"pipelines"},
    {"train"},
    {"config_schema"},
    {"harness"},
    {"study", "commands"},
    {"cli", "train_autoencoder", "generate", "edit"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _unit(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: pathlib.Path) -> set[str]:
    """Sub-packages / top-level modules of mmdit_jax that ``path`` imports (any scope, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "mmdit_jax" else [f"mmdit_jax.{a.name}" for a in node.names]
        else:
            continue
        out |= {n.split(".")[1] for n in names if n.startswith("mmdit_jax.")}
    return out


def test_every_module_belongs_to_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS (and README's layout table)"


def test_imports_only_go_down_the_layers():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue
        for target in _imports(path) - {unit}:
            if RANK.get(target, -1) >= RANK[unit]:
                bad.append(f"{path.relative_to(PACKAGE)} imports mmdit_jax.{target}")
    assert not bad, "\n".join(sorted(bad))


def test_the_maths_and_the_models_never_import_training_or_inference():
    for unit in ("diffusion", "models"):
        for path in (PACKAGE / unit).rglob("*.py"):
            assert not _imports(path) & {"train", "pipelines", "families", "interop"}, path
