"""Matplotlib plots of NC metrics (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_layer_curve(curves: Mapping[str, Mapping], path: str | Path, title: str = "NC1 per block",
                     ylabel: str = "NC1 (log scale)", xlabel: str = "block") -> Path:
    """Plots one metric (log scale) against an integer x (a block index, a step), one line per curve.

    Args:
        curves: ``{label: {x (int or str): value}}``.
        path: PNG file to write.
    """
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, values in curves.items():
        xs = sorted(int(k) for k in values)
        ax.plot(xs, [values[k] if k in values else values[str(k)] for k in xs], marker="o", label=label)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
