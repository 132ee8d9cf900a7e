"""Every notebook under notebooks/ runs top to bottom in a fresh Jupyter kernel (nbclient), with no cell
in error, and draws the pictures it promises (image outputs counted)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="the notebook extra is not installed: pip install 'fxforge[notebook]'")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MIN_IMAGES = {"pass_inspection.ipynb": 12}  # at least this many rendered pictures
TIMEOUT_S = 300  # per cell; the whole pass-inspection notebook runs in under 3 minutes on a CPU


def _images(nb) -> int:
    return sum(1 for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []) if "image/png" in out.get("data", {}))


def _errors(nb) -> list[str]:
    return [f"cell {cell.get('id')}: {out.get('ename')}: {out.get('evalue')}" for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "error"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_a_fresh_kernel(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: outputs are not stripped"
    root = str(path.parents[1])
    # the kernel imports this checkout's fxforge, runs on the CPU, quietly, one thread, as a user runs it: without
    # the tests' FXFORGE_VERIFY=1 (IR verification after every pass is the pass tests' job; in the notebook it
    # tripled the budget's search, which verifies every candidate's passes)
    env = {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), "FXFORGE_QUIET": "1",
           "FXFORGE_VERIFY": "0",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # ipykernel's own kernel spec ("python3") starts sys.executable: the kernel runs in this environment
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    assert _errors(nb) == []
    assert _images(nb) >= MIN_IMAGES.get(path.name, 0), f"{path.name} drew {_images(nb)} pictures"
