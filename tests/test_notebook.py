"""The quickstart notebook runs headless from top to bottom, and its outputs are stored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "notebooks" / "quickstart.ipynb"


def outputs_of(cells: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    return [out for cell in cells if cell["cell_type"] == "code" for out in cell["outputs"]]


@pytest.mark.timeout(180)
def test_quickstart_notebook_runs() -> None:
    """Every cell runs without error; the notebook view and the plots are displayed."""
    nbformat = pytest.importorskip("nbformat", reason="running the notebook needs nbformat")
    nbclient = pytest.importorskip("nbclient", reason="running the notebook needs nbclient")
    pytest.importorskip("ipykernel", reason="running the notebook needs ipykernel")
    pytest.importorskip("matplotlib", reason="the notebook's plots need matplotlib")
    os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3")
    client.execute(cwd=str(NOTEBOOK.parent))
    outputs = outputs_of(nb.cells)
    assert not [o for o in outputs if o["output_type"] == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("Model versions" in h and "slow-model" in h for h in html)
    assert any("<b>Prediction</b>" in h for h in html)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2  # plot() and plot_policy()


def test_committed_notebook_has_its_outputs() -> None:
    """The committed notebook carries its outputs, so the docs site shows them."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    outputs = outputs_of(cells)
    assert any("text/html" in o.get("data", {}) for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert not [o for o in outputs if o["output_type"] == "error"]
