"""Coordinate check: does every layer keep learning features as the width grows?

For each width, train a few steps from the parameterisation's initialisation and measure, on a
fixed probe batch, the size of each layer's feature update

    Δh_l(t) = mean |h_l(θ_t) - h_l(θ_0)|      (mean over probe examples and coordinates),

where ``h_l`` is layer ``l``'s pre-activation output. Under μP ``Δh_l`` is Θ(1) in the width for
every layer (a flat line on a log-log plot, fitted slope ≈ 0); under SP the hidden layers'
updates vanish (negative slope) or blow up (positive slope).

References:
  Yang et al., *Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter
  Transfer*, 2022 (the coordinate check).
  Ishikawa & Karakida, *On the Parameterization of Second-Order Optimization Effective Towards
  the Infinite Width*, ICLR 2024.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.files import save_figure
from metagrad.optim.experiment import WidthConfig, build, init_label, make_train, prepare_inputs
from metagrad.optim.tasks import ClassificationTask
from metagrad.progress import progress_bar


def fit_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``log2(values)`` against ``log2(widths)``.

    Returns ``nan`` if any value is not positive and finite.
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        return float("nan")
    return float(np.polyfit(np.log2(np.asarray(widths, np.float64)), np.log2(v), 1)[0])


def layer_labels(setup: Any, n_features: int) -> list[str]:
    """Names of the feature maps, ``"<index>:<role of the layer's weight>"``, or the model's own
    ``feature_names`` (the decoder LM's)."""
    names = getattr(setup.model, "feature_names", None)
    if names is not None and len(names) == n_features:
        return list(names)
    roles = setup.shapes.roles()
    labels = []
    for i in range(n_features):
        labels.append(f"{i}:{roles.get(f'{i}/w', 'layer')}")
    return labels


def coord_check(
    config: WidthConfig,
    widths: Sequence[int],
    task: ClassificationTask,
    *,
    lr: float,
    steps: int = 5,
    seeds: int = 3,
    probe_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the coordinate check of one optimiser and parameterisation.

    Args:
      config: the experiment (optimiser, parameterisation, model, base width, ...).
      widths: widths to check, e.g. ``(64, 128, ..., 2048)``.
      task: the data; training batches are drawn from its training set.
      lr: the (base) learning rate.
      steps: training steps per width.
      seeds: initialisations (and batch orders) averaged per width.
      probe_size: examples in the fixed probe batch.
      progress: show a progress bar.

    Returns:
      A JSON-serialisable dict: ``config``, ``widths``, ``layers`` (labels), ``delta_h``
      (``[layer][width][step]``, mean over seeds), ``delta_h_std`` (over seeds), ``slopes``
      (``{layer: fitted log-log slope at the last step}``), ``slopes_per_step``, ``value`` and
      ``slopes_value`` (the same for the size of the features themselves, mean ``|h_t|``, the
      statistic of the ``mup`` package's coordinate check) and ``seconds`` per width.
    """
    widths = [int(w) for w in widths]
    if len(widths) < 2:
        raise ValueError(f"coord_check: widths needs at least two widths; got {widths}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"coord_check: steps must be a positive int; got {steps!r}.")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"coord_check: seeds must be a positive int; got {seeds!r}.")
    x_train = prepare_inputs(config, task.x_train)
    y_train = jnp.asarray(task.y_train)
    probe = x_train[:probe_size]
    all_deltas: list[np.ndarray] = []  # per width: (seeds, steps, layers)
    all_values: list[np.ndarray] = []
    seconds = []
    labels: list[str] = []
    with progress_bar(progress) as bar:
        job = bar.add_task(
            f"coord-check {config.optimizer}/{config.param}", total=len(widths) * seeds
        )
        for width in widths:
            t0 = time.perf_counter()
            setup = build(config, width, task)
            run = _make_run(setup, steps, config.batch_size)
            per_seed, values = [], []
            for seed in range(seeds):
                params = setup.init(jax.random.key(seed))
                deltas, value = run(
                    params, lr, jax.random.key(10_000 + seed), x_train, y_train, probe
                )
                per_seed.append(np.asarray(deltas, np.float64))
                values.append(np.asarray(value, np.float64))
                bar.advance(job)
            all_deltas.append(np.stack(per_seed))
            all_values.append(np.stack(values))
            seconds.append(time.perf_counter() - t0)
            # Roles are read at the widest width (at the base width nothing is "wide").
            labels = layer_labels(setup, per_seed[0].shape[1])
    stacked = np.stack(all_deltas)  # (widths, seeds, steps, layers)
    mean = stacked.mean(axis=1)
    std = stacked.std(axis=1)
    n_layers = mean.shape[-1]
    delta_h = {labels[l]: mean[:, :, l].tolist() for l in range(n_layers)}
    slopes = {labels[l]: fit_slope(widths, mean[:, -1, l]) for l in range(n_layers)}
    per_step = {
        labels[l]: [fit_slope(widths, mean[:, t, l]) for t in range(mean.shape[1])]
        for l in range(n_layers)
    }
    value = np.stack(all_values).mean(axis=1)  # (widths, steps, layers)
    return {
        "config": dataclasses.asdict(config),
        "lr": lr,
        "steps": steps,
        "seeds": seeds,
        "probe_size": int(probe.shape[0]),
        "task": task.name,
        "widths": widths,
        "layers": labels,
        "delta_h": delta_h,
        "delta_h_std": {labels[l]: std[:, :, l].tolist() for l in range(n_layers)},
        "slopes": slopes,
        "slopes_per_step": per_step,
        "value": {labels[l]: value[:, :, l].tolist() for l in range(n_layers)},
        "slopes_value": {labels[l]: fit_slope(widths, value[:, -1, l]) for l in range(n_layers)},
        "seconds": seconds,
    }


def _make_run(setup: Any, steps: int, batch_size: int):
    """``run(params, lr, key, x, y, probe) -> (Δh, |h|)``: mean |h_t - h_0| and mean |h_t| of
    every layer's features on the probe batch after each step, each of shape ``(steps, layers)``."""

    def features(params, x):
        _, feats = setup.model.apply(params, x, return_features=True)
        return feats

    def delta(params, loss, probe, h0):
        h = features(params, probe)
        change = [jnp.mean(jnp.abs(a - b)) for a, b in zip(h, h0, strict=True)]
        value = [jnp.mean(jnp.abs(a)) for a in h]
        return jnp.stack([jnp.stack(change), jnp.stack(value)]).astype(jnp.float32)

    train = make_train(setup, steps, batch_size, observe=delta)

    def run(params, lr, key, x, y, probe):
        records = train(params, lr, key, x, y, probe, features(params, probe))[1]
        return records[:, 0], records[:, 1]

    return run


def plot_coord_checks(results: Sequence[dict[str, Any]], path: str) -> None:
    """Plots ``Δh`` against width, one row per result (optimiser/param), one column per layer.

    Each panel shows one line per training step (darker = later) and the fitted slope of the
    last step in its title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = len(results)
    n_cols = max(len(r["layers"]) for r in results)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.2 * n_cols, 2.6 * n_rows), squeeze=False, sharex=True
    )
    for i, r in enumerate(results):
        widths = r["widths"]
        for j, label in enumerate(r["layers"]):
            ax = axes[i][j]
            curves = np.asarray(r["delta_h"][label])  # (widths, steps)
            n_steps = curves.shape[1]
            cmap = matplotlib.colormaps["viridis"]
            for t in range(n_steps):
                ax.plot(
                    widths,
                    curves[:, t],
                    marker="o",
                    ms=3,
                    color=cmap(0.15 + 0.8 * t / max(1, n_steps - 1)),
                    label=f"t={t + 1}",
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            slope = r["slopes"][label]
            cfg = r["config"]
            name = f"{cfg['optimizer']}/{cfg['param']}"
            if cfg["optimizer"] == "kfac":
                name += f" ({cfg['damping_rule']})"
            name += init_label(cfg)
            ax.set_title(f"{name} {label}\nslope {slope:+.2f}", fontsize=8)
            if i == n_rows - 1:
                ax.set_xlabel("width")
            if j == 0:
                ax.set_ylabel("mean |Δh|")
            ax.tick_params(labelsize=7)
        for j in range(len(r["layers"]), n_cols):
            axes[i][j].axis("off")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)


def summarize(result: dict[str, Any], tolerance: float = 0.1) -> dict[str, Any]:
    """Whether every layer's slope is within ``±tolerance`` (μP) and the hidden slopes (SP)."""
    slopes = result["slopes"]
    flat = all(math.isfinite(s) and abs(s) <= tolerance for s in slopes.values())
    hidden = [s for k, s in slopes.items() if "hidden" in k]
    return {
        "all_within_tolerance": flat,
        "tolerance": tolerance,
        "max_abs_slope": max(abs(s) for s in slopes.values()),
        "hidden_slopes": hidden,
    }
