"""Execute a notebook top to bottom and save it with its outputs, so it reads on a code host
(`make notebook`).

    .venv/bin/python notebooks/execute.py notebooks/demo.ipynb

Runs in the notebook's folder with the `python3` kernel; the file is replaced atomically, and only
when every cell ran.
"""

import os
import sys

import nbformat
from nbclient import NotebookClient

from gpq_keras.files import atomic_path


def main(path):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=1800,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
    ).execute()
    # No run times in the file: re-running changes only what the outputs show.
    for cell in notebook.cells:
        cell.get("metadata", {}).pop("execution", None)
    with atomic_path(path, suffix=".ipynb") as tmp:
        nbformat.write(notebook, tmp)
    print(f"wrote {path} with its outputs")


if __name__ == "__main__":
    main(sys.argv[1])
