"""The notebooks and the README's Python examples run, top to bottom, on the public API."""

from __future__ import annotations

import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

pytestmark = pytest.mark.slow

SMALL = {"TRAIN_STEPS": 30, "EPISODES": 2, "PPO_BUDGET": 512}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb")))
def test_notebook_runs(name, tmp_path):
    book = nbformat.read(REPO / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), "store notebooks without outputs"
    at = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    overrides = [f"WORKDIR = {str(tmp_path)!r}"] + [f"{k} = {v!r}" for k, v in SMALL.items() if k in book.cells[at].source]
    book.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(overrides)))
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_readme_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    runnable = [b for b in blocks if "# doctest: +SKIP" not in b]
    assert runnable, "the README should have runnable Python examples"
    for block in runnable:
        subprocess.run([sys.executable, "-c", block], cwd=tmp_path, check=True, timeout=600)
