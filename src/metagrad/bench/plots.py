"""PNG plots of benchmark results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metagrad.files import save_figure

MODE_STYLE = {
    "reverse": {"color": "#d62728", "marker": "o", "label": "reverse-over-reverse"},
    "remat": {"color": "#ff7f0e", "marker": "s", "label": "per-step remat"},
    "mixflow": {"color": "#2ca02c", "marker": "^", "label": "mixed mode (mixflow)"},
}


def plot_memory_sweep(rows: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Temp memory against the swept size, one line per mode (log-log axes).

    For a T sweep, a dashed line shows the mixflow memory at the smallest T plus the predicted
    per-step term (T copies of parameters, optimiser state and gradient).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parameter = rows[0]["parameter"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for mode in MODE_STYLE:
        points = sorted((r["value"], r["temp_mib"]) for r in rows if r["mode"] == mode)
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, **MODE_STYLE[mode])
    mix = sorted(
        (r["value"], r["temp_mib"], r["per_step_state_mib"]) for r in rows if r["mode"] == "mixflow"
    )
    if parameter == "T" and mix:
        t0, m0, per_step = mix[0]
        xs = [p[0] for p in mix]
        ax.plot(
            xs,
            [m0 + per_step * (t - t0) for t in xs],
            "k--",
            lw=1,
            label="mixflow at smallest T + T·(|θ|+|m|+|v|+|g|)",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel({"T": "inner steps T", "S": "sequence length S"}.get(parameter, parameter))
    ax.set_ylabel("XLA temp memory of the meta-gradient (MiB)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
