"""docs/notebooks/quickstart.ipynb runs top to bottom without an error (nbclient), so it cannot rot."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import require_extra

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    nbformat = require_extra("nbformat")
    nbclient = require_extra("nbclient")
    require_extra("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel is this interpreter (jupyter_client swaps the kernelspec's bare "python" for sys.executable);
    # it must import jaxllm and experiments from the checkout.
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any failing cell
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "resumed from 60" in outputs
    assert "test_accuracy" in outputs
