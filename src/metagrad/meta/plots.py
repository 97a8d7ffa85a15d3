"""PNG plots of the two applications (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metagrad.files import save_figure
from metagrad.meta.runner import curves


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    fig.tight_layout()
    return save_figure(fig, path)


def plot_validation_curves(
    metrics: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    steps_per_window: int,
    title: str,
    styles: Mapping[str, dict[str, Any]] | None = None,
) -> Path:
    """Validation loss against inner training steps, one curve per arm.

    Args:
      metrics: the parsed ``metrics.jsonl`` lines.
      path: the PNG to write.
      steps_per_window: inner steps per logged step (T), to label the x-axis in inner steps.
      title: the figure title.
      styles: optional matplotlib keyword arguments per arm.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, (steps, values) in curves(list(metrics), "val", "loss").items():
        style = dict((styles or {}).get(arm, {}))
        ax.plot(np.asarray(steps) * steps_per_window, values, label=arm, **style)
    ax.set_xlabel("inner training steps")
    ax.set_ylabel("validation loss (nats / byte)")
    ax.set_title(title, fontsize=10)
    all_values = [v for _, vs in curves(list(metrics), "val", "loss").values() for v in vs]
    if all_values:
        # The first evaluations (untrained model, ~5.5 nats) would squash the interesting part.
        low, high = min(all_values), float(np.percentile(all_values, 90))
        ax.set_ylim(low - 0.05 * (high - low), high)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_weight_histogram(
    weights: np.ndarray, corrupted: np.ndarray, path: str | os.PathLike[str], *, title: str
) -> Path:
    """Histogram of the learned weights of clean and corrupted training sequences."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(weights[~corrupted], bins=bins, alpha=0.6, label=f"clean ({int((~corrupted).sum())})")
    ax.hist(weights[corrupted], bins=bins, alpha=0.6, label=f"corrupted ({int(corrupted.sum())})")
    ax.set_xlabel("learned weight")
    ax.set_ylabel("training sequences")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_learned_rates(
    metrics: Sequence[dict[str, Any]],
    grid: Sequence[float],
    path: str | os.PathLike[str],
    *,
    steps_per_window: int,
    title: str,
) -> Path:
    """The learned per-layer learning rates over training, with the grid as dotted lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    keys = sorted({k for m in metrics if m["arm"] == "learned" for k in m if k.startswith("lr/")})
    for key in keys:
        steps, values = curves(list(metrics), "train", key).get("learned", ([], []))
        ax.plot(np.asarray(steps) * steps_per_window, values, label=key[3:])
    for lr in grid:
        ax.axhline(lr, color="0.6", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("inner training steps")
    ax.set_ylabel("learning rate (dotted: the fixed grid)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
