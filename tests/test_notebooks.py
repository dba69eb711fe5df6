"""Every notebook in notebooks/ runs end to end, and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]


def test_there_is_a_quickstart():
    assert NOTEBOOK_DIR / "quickstart.ipynb" in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs; clear them (jupyter nbconvert --clear-output --inplace)"
    )
    assert "widgets" not in nb.metadata, f"{path.name} carries saved widget state"


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_end_to_end(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    # a private IPython profile: no user start-up files or auto-loaded extensions, no history writes
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    # notebooks read this to run their small mode (fewer requests, smaller data) under the tests
    monkeypatch.setenv("CLOUDFLOW_NB_SMALL", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == "code")
