"""Plots of a `capacity.py --json` run: capacity against the ideal and greedy, and the
failed share in each window after the load step.

    python benchmarks/plot_capacity.py RESULT.json [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(args: argparse.Namespace) -> int:
    data = json.loads(Path(args.result).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = f"{data['machine']}; {data['date']}; {data['command']}"
    if "capacity" in data:
        cap = data["capacity"]
        ideal = cap["ideal"]
        runs = cap["runs"]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.38
        for k, name in enumerate(("clipperlite", "greedy")):
            xs = [i + (k - 0.5) * width for i in range(len(runs))]
            ax.bar(xs, [r[name] / ideal for r in runs], width, label=name)
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="ideal (model called directly)")
        ax.axhline(0.85, color="grey", lw=0.8, ls=":", label="target 0.85 x ideal")
        ax.set_xticks(range(len(runs)), [f"run {i + 1}" for i in range(len(runs))])
        ax.set_ylabel("sustained rate / ideal")
        ax.set_title("Capacity, SLO 20 ms, p99 <= SLO and <= 1% defaults", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        fig.text(0.01, 0.01, stamp, fontsize=6, color="grey")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.savefig(out / "capacity.png", dpi=120)
        plt.close(fig)
    if "step" in data:
        windows = ["0-0.1 s", "0.1-0.25 s", "0.25-0.5 s", "0.5-1 s"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
        width = 0.38
        for k, (name, cells) in enumerate(data["step"].items()):
            xs = [i + (k - 0.5) * width for i in range(len(cells))]
            ax1.bar(xs, [100 * f for f, _ in cells], width, label=name)
            ax2.bar(xs, [1e3 * p for _, p in cells], width, label=name)
        ax1.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax2.axhline(20.0, color="k", lw=0.8, ls="--", label="SLO")
        for ax, label in ((ax1, "failed %"), (ax2, "p99 ms")):
            ax.set_xticks(range(len(windows)), windows, fontsize=7)
            ax.set_ylabel(label)
            ax.set_xlabel("after the step 2,000/s -> 11,000/s", fontsize=8)
        ax2.legend(fontsize=8)
        fig.text(0.01, 0.01, stamp, fontsize=6, color="grey")
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        fig.savefig(out / "load_step.png", dpi=120)
        plt.close(fig)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result")
    parser.add_argument("--out", default="docs/img")
    sys.exit(main(parser.parse_args()))
