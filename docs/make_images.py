"""Make the docs' images: the plots, the notebook view (HTML, and a PNG when a headless
chromium is installed), and run the quickstart notebook in place so its outputs are stored.

Run from the repository root: python docs/make_images.py [--no-notebook]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

import clipperlite
from clipperlite.plotting import PolicyRecorder, plot, plot_policy

DOCS = Path(__file__).resolve().parent
IMG = DOCS / "img"


def slow_sum(xs: list[np.ndarray]) -> list[float]:
    """About a millisecond per batch plus a little per input: batching pays."""
    time.sleep(0.001 + 0.00002 * len(xs))
    return [float(x.sum()) for x in xs]


def flaky(xs: list[np.ndarray]) -> list[float]:
    """A model that raises on inputs whose first feature is negative."""
    if any(x[0] < 0 for x in xs):
        raise ValueError("negative feature")
    return [float(x[0]) for x in xs]


def noisy(accuracy: float, seed: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)

    def predict(xs: list[np.ndarray]) -> list[int]:
        return [int(x[0]) if rng.random() < accuracy else int(rng.integers(10)) for x in xs]

    return predict


async def demo() -> tuple[str, object, object]:
    """A Clipper with traffic: (the notebook view's HTML, plot(), plot_policy())."""
    rng = np.random.default_rng(0)
    async with clipperlite.Clipper(seed=0) as clipper:
        clipper.register_application("busy", "doubles", -1.0, 20_000)
        clipper.register_application("hello-world", "doubles", -1.0, 100_000)
        clipper.register_application("lonely", "doubles", 0.0, 50_000)
        await clipper.deploy_model("slow-model", 1, "doubles", slow_sum)
        await clipper.deploy_model("flaky-model", 1, "doubles", flaky)
        clipper.link_model_to_app("busy", "slow-model")
        clipper.link_model_to_app("hello-world", "flaky-model")
        for _ in range(25):
            await asyncio.gather(*(clipper.predict("busy", rng.random(8)) for _ in range(200)))
            await asyncio.sleep(0.01)
        for i in range(40):
            await clipper.predict("hello-world", [float(i % 7 - 1), 1.0])
        await clipper.predict("lonely", [1.0])

        clipper.register_application("digits", "integers", -1, 1_000_000, policy="exp4")
        for name, accuracy in [("good", 0.9), ("fair", 0.6), ("random", 0.1)]:
            await clipper.deploy_model(name, 1, "integers", noisy(accuracy, len(name)))
            clipper.link_model_to_app("digits", name)
        recorder = PolicyRecorder(clipper, "digits")
        recorder.record()
        for i in range(150):
            label = int(rng.integers(10))
            await recorder.feedback([label, i], label)
        view = clipper._repr_html_()
        return view, plot(clipper, "slow-model"), plot_policy(clipper, "digits", recorder=recorder)


def screenshot(html_file: Path, png: Path) -> bool:
    """A PNG of the HTML file by headless chromium; False when no chromium is installed."""
    browser = next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(b)
        ),
        None,
    )
    if browser is None:
        return False
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                "--window-size=1400,520",
                html_file.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return png.exists()


def run_notebook() -> None:
    """Execute docs/notebooks/quickstart.ipynb in place, storing its outputs."""
    import nbclient
    import nbformat

    path = DOCS / "notebooks" / "quickstart.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(path.parent))
    nbformat.write(nb, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-notebook", action="store_true", help="do not run the notebook")
    args = parser.parse_args()
    view, fig, policy_fig = asyncio.run(demo())
    IMG.mkdir(exist_ok=True)
    page = IMG / "notebook_view.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>clipperlite notebook view</title>"
        f"<body style='font-family:sans-serif;margin:12px'>{view}</body>\n"
    )
    fig.savefig(IMG / "plot.png", dpi=80)  # type: ignore[attr-defined]
    policy_fig.savefig(IMG / "plot_policy.png", dpi=80)  # type: ignore[attr-defined]
    shot = screenshot(page, IMG / "notebook_view.png")
    print("notebook view PNG:", "written" if shot else "skipped (no chromium)", file=sys.stderr)
    if not args.no_notebook:
        run_notebook()


if __name__ == "__main__":
    main()
