"""The InteractiveContext notebook runs top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import os
import pathlib

import pytest

pytestmark = pytest.mark.e2e

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "pipeline_walkthrough.ipynb"


def test_walkthrough_notebook_executes(tmp_path, artifacts_dir, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("HISTOPATH_NB_OUTPUT", str(tmp_path))
    monkeypatch.setenv("HISTOPATH_NB_MODELS", "mil")  # one Trainer keeps the test short
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    nbformat.write(notebook, artifacts_dir / "pipeline_walkthrough.executed.ipynb")

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the ROC plot is shown
    versions = list((tmp_path / "run" / "serving" / "histopath").iterdir())
    assert len(versions) == 1 and versions[0].name.isdigit()
    assert (versions[0] / "saved_model.pb").is_file()
