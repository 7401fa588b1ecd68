"""The demo notebook: committed with its outputs (it reads on a code host without being run), and it
still runs from top to bottom (a short training) and shows its figures."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "demo.ipynb")
FIGURES = ["codeword_usage.png", "precision_recall.png", "ranked.png", "tsne.png"]


def _outputs(notebook):
    printed = "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    images = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    tables = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if "text/markdown" in out.get("data", {})
    ]
    return printed, images, tables


def test_committed_notebook_shows_its_outputs():
    """`make notebook` saved it executed: results table, results plot, t-SNE, codeword usage, ranked
    lists and the precision-recall plot are in the file, every code cell ran, in order."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    printed, images, tables = _outputs(notebook)
    assert "consistent: mAP" in printed and "codes: (1117, 12) uint8" in printed
    assert len(images) == 5
    assert len(tables) == 1 and "| GPQ |" in tables[0]["data"]["text/markdown"]
    assert not [
        out for cell in code for out in cell.get("outputs", []) if out.get("output_type") == "error"
    ]


@pytest.mark.large
def test_demo_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("GPQ_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("GPQ_NOTEBOOK_OUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:  # from scratch: the committed outputs go
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}},
    ).execute()
    printed, images, _ = _outputs(notebook)
    assert "mAP" in printed and "codes: (1117, 12) uint8" in printed
    assert len(images) == 5  # results plot, t-SNE, codeword usage, ranked lists, precision-recall
    assert sorted(os.listdir(tmp_path)) == FIGURES
