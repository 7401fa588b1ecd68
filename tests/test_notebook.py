"""The demo notebook runs from top to bottom (a short training) and shows its figures."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "demo.ipynb")


@pytest.mark.large
def test_demo_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("GPQ_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("GPQ_NOTEBOOK_OUT", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    printed = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "mAP" in printed and "codes: (1117, 12) uint8" in printed
    images = [out for cell in notebook.cells for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert len(images) == 4  # three ranked lists and the precision-recall plot
    assert sorted(os.listdir(tmp_path)) == ["precision_recall.png", "ranked_0.png", "ranked_170.png",
                                            "ranked_90.png"]
