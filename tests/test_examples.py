"""Every file under examples/ runs to the end: the examples cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 120


def run_example(name: str) -> str:
    """Run one example in a fresh interpreter; its standard output."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_has_a_test() -> None:
    """Each example file is run by a test below (a new example cannot go untested)."""
    tested = {
        "quickstart.py",
        "xgboost_tutorial.py",
        "sklearn_versions.py",
        "image_query.py",
        "exp4_feedback.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.timeout(TIMEOUT_S + 10)
def test_quickstart() -> None:
    """The quickstart answers 6.6 and explains the default of an app without a model."""
    out = run_example("quickstart.py")
    assert "Prediction(query_id=0, output=6.6, default=False, default_explanation=None)" in out
    assert "default_cause='no_model'" in out


@pytest.mark.timeout(TIMEOUT_S + 10)
def test_xgboost_tutorial() -> None:
    """The xgboost model answers 784-integer queries without defaults, and right."""
    pytest.importorskip("xgboost", reason="the xgboost tutorial needs xgboost")
    out = run_example("xgboost_tutorial.py")
    assert "200 queries, 0 defaults" in out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy >= 0.9


@pytest.mark.timeout(TIMEOUT_S + 10)
def test_sklearn_versions() -> None:
    """Version 2 is worse, and the rollback to version 1 restores its accuracy."""
    pytest.importorskip("sklearn", reason="the versions example needs scikit-learn")
    lines = run_example("sklearn_versions.py").splitlines()
    acc = [float(line.rsplit(" ", 1)[1]) for line in lines if "accuracy" in line]
    assert len(acc) == 3
    assert acc[0] > 0.9 and acc[1] < acc[0] and acc[2] == acc[0]
    assert "rolled back to version 1" in lines[2]


@pytest.mark.timeout(TIMEOUT_S + 10)
def test_image_query() -> None:
    """PNG bytes reach the model, which answers their size (decoded when Pillow is there)."""
    out = run_example("image_query.py")
    try:
        import PIL  # noqa: F401
    except ImportError:
        assert "bytes (default=False)" in out
    else:
        assert "32x16 PNG -> (32, 16) (default=False)" in out
        assert "8x120 PNG -> (8, 120) (default=False)" in out


@pytest.mark.timeout(TIMEOUT_S + 10)
def test_exp4_feedback() -> None:
    """Feedback moves Exp4's weight to the best model."""
    out = run_example("exp4_feedback.py")
    shares = out.split("weight shares: ")[1]
    good = float(shares.split("'good': ")[1].split(",")[0])
    assert good > 0.9
