"""The docs site builds with `mkdocs build --strict`: no broken link, nav entry or API path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_docs_build_strictly(tmp_path: Path) -> None:
    """Every page builds, the API reference is generated from the docstrings."""
    pytest.importorskip("mkdocs", reason="building the docs needs the docs extra (mkdocs)")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    api = (site / "api" / "index.html").read_text()
    assert 'id="clipperlite.Clipper.predict"' in api  # generated, not hand-written
    assert (site / "notebooks" / "quickstart" / "index.html").exists()
    assert (site / "img" / "notebook_view.png").exists()
    shutil.rmtree(site)
