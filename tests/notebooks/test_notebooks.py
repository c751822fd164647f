"""Every notebook executes top to bottom on tiny settings, and is committed with outputs stripped."""

import glob
import os

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes_and_is_stripped(path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    monkeypatch.setenv("MMDIT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


# ---- steering_explorer.ipynb on its other sources (the test above runs its default: a tiny untrained SD3-style run)

STEERING = os.path.join(ROOT, "notebooks", "steering_explorer.ipynb")


def _run_steering_explorer(monkeypatch, **env):
    """Execute the steering explorer in tiny mode with ``MMDIT_STEERING_<KEY>`` set from ``env``; its printed text."""
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(STEERING, as_version=4)
    monkeypatch.setenv("MMDIT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for key, value in env.items():
        monkeypatch.setenv(f"MMDIT_STEERING_{key.upper()}", value)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")


def test_steering_explorer_on_a_pipeline_folder(tiny_flux_folder, monkeypatch):
    text = _run_steering_explorer(monkeypatch, source="pipeline", pipeline=str(tiny_flux_folder))
    assert "`FluxPipeline` folder" in text
    assert "max |w = 0 − unsteered| = 0 (uint8 levels)" in text
    assert "max |no pooled − unsteered| = " in text and "not available" not in text
