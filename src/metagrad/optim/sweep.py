"""Hyper-parameter transfer sweep: the best learning rate (or damping) at every width.

Trains the model of a :class:`~metagrad.optim.experiment.WidthConfig` at each width, for each
value of a power-of-two grid, for a fixed number of steps and several seeds, and records the
final loss. Under μP the best learning rate should stay put as the width grows ("transfer") and,
at a fixed learning rate, wider should not be worse; under SP the optimum drifts.

References:
  Yang et al., *Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter
  Transfer*, 2022.
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
from metagrad.optim.experiment import (
    WidthConfig,
    build,
    evaluate,
    init_label,
    make_train,
    prepare_inputs,
)
from metagrad.optim.tasks import ClassificationTask
from metagrad.progress import progress_bar

SWEEP_OVER = ("lr", "damping")


def power_of_two_grid(low: float, high: float) -> list[float]:
    """``[2^k for k in range(log2(low), log2(high) + 1)]`` (both ends rounded to powers of 2)."""
    if not (low > 0 and high >= low):
        raise ValueError(f"power_of_two_grid: need 0 < low <= high; got low={low}, high={high}.")
    k0, k1 = round(math.log2(low)), round(math.log2(high))
    return [2.0**k for k in range(k0, k1 + 1)]


def sweep(
    config: WidthConfig,
    widths: Sequence[int],
    values: Sequence[float],
    task: ClassificationTask,
    *,
    over: str = "lr",
    lr: float | None = None,
    steps: int = 200,
    seeds: int = 2,
    eval_size: int = 2048,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains every (width, value, seed) and reports the loss curves and the best value per width.

    Args:
      config: the experiment (optimiser, parameterisation, model, ...).
      widths: widths to train.
      values: the grid: learning rates (``over="lr"``) or K-FAC dampings (``over="damping"``).
      task: the data.
      over: ``"lr"`` or ``"damping"``.
      lr: the fixed learning rate of a damping sweep.
      steps: training steps per run.
      seeds: runs per (width, value); the losses are averaged.
      eval_size: training examples used to measure the final training loss.
      progress: show a progress bar.

    Returns:
      A JSON-serialisable dict with, per width, the mean and standard deviation over seeds of the
      final ``train_loss`` (on ``eval_size`` training examples), ``eval_loss`` and
      ``eval_accuracy`` for every value, the ``best`` value (lowest mean training loss; diverged
      runs, with a non-finite loss or one above 3x the loss of a uniform prediction, count as
      ``inf``), its grid index, and a ``summary`` with the drift of the best value
      in grid steps and whether the loss at each fixed value gets worse with width.
    """
    if over not in SWEEP_OVER:
        raise ValueError(f"sweep: over must be one of {SWEEP_OVER}; got {over!r}.")
    if over == "damping":
        if config.optimizer != "kfac":
            raise ValueError(
                f"sweep: a damping sweep needs optimizer 'kfac'; got {config.optimizer!r}."
            )
        if lr is None:
            raise ValueError("sweep: a damping sweep needs a fixed lr=...; got None.")
    values = [float(v) for v in values]
    widths = [int(w) for w in widths]
    if not values or not widths:
        raise ValueError(f"sweep: widths and values must be non-empty; got {widths}, {values}.")
    for name, v in (("steps", steps), ("seeds", seeds), ("eval_size", eval_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"sweep: {name} must be a positive int; got {v!r}.")
    x_train = prepare_inputs(config, task.x_train)
    y_train = jnp.asarray(task.y_train)
    x_eval = prepare_inputs(config, task.x_eval)
    y_eval = jnp.asarray(task.y_eval)
    x_fit, y_fit = x_train[:eval_size], y_train[:eval_size]
    # A run whose final loss is above 3x the loss of a uniform prediction has diverged.
    diverged_above = 3.0 * math.log(task.n_classes)
    per_width: dict[str, Any] = {}
    total = len(widths) * len(values) * seeds
    with progress_bar(progress) as bar:
        job = bar.add_task(
            f"sweep {over} {config.optimizer}/{config.param}/{config.model}", total=total
        )
        for width in widths:
            t0 = time.perf_counter()
            rows = {"train_loss": [], "eval_loss": [], "eval_accuracy": []}
            setup = train = None
            for value in values:
                if over == "lr":
                    if setup is None:
                        setup = build(config, width, task)
                        train = make_train(setup, steps, config.batch_size)
                    run_lr = value
                else:
                    setup = build(dataclasses.replace(config, damping=value), width, task)
                    train = make_train(setup, steps, config.batch_size)
                    run_lr = lr
                runs = {"train_loss": [], "eval_loss": [], "eval_accuracy": []}
                for seed in range(seeds):
                    params = setup.init(jax.random.key(seed))
                    params, _ = train(
                        params, run_lr, jax.random.key(10_000 + seed), x_train, y_train
                    )
                    ok = all(
                        bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(params)
                    )
                    if ok:
                        tl, _ = evaluate(setup, params, x_fit, y_fit)
                        el, acc = evaluate(setup, params, x_eval, y_eval)
                    else:
                        tl, el, acc = math.inf, math.inf, 0.0
                    if not math.isfinite(tl) or tl > diverged_above:
                        tl, el, acc = math.inf, math.inf, 0.0
                    runs["train_loss"].append(tl)
                    runs["eval_loss"].append(el)
                    runs["eval_accuracy"].append(acc)
                    bar.advance(job)
                for k, v in runs.items():
                    rows[k].append(v)
            per_width[str(width)] = _width_summary(rows, values)
            per_width[str(width)]["seconds"] = time.perf_counter() - t0
    return {
        "config": dataclasses.asdict(config),
        "over": over,
        "lr": lr,
        "values": values,
        "widths": widths,
        "steps": steps,
        "seeds": seeds,
        "task": task.name,
        "results": per_width,
        "summary": summarize(per_width, widths, values),
    }


def _finite_mean(xs: Sequence[float]) -> float:
    a = np.asarray(xs, np.float64)
    return float(a.mean()) if np.all(np.isfinite(a)) else math.inf


def _width_summary(rows: dict[str, list[list[float]]], values: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, runs in rows.items():
        out[k] = [_finite_mean(r) for r in runs]
        out[k + "_std"] = [float(np.std(r)) if np.all(np.isfinite(r)) else math.inf for r in runs]
    losses = np.asarray(out["train_loss"])
    best = int(np.argmin(losses)) if np.any(np.isfinite(losses)) else -1
    out["best_index"] = best
    out["best"] = values[best] if best >= 0 else None
    out["best_train_loss"] = float(losses[best]) if best >= 0 else math.inf
    return out


def summarize(per_width: dict[str, Any], widths: list[int], values: list[float]) -> dict[str, Any]:
    """Drift of the best value across widths and monotonicity of the loss at fixed values.

    Returns:
      ``best_per_width``, ``best_shift_grid_steps`` (max minus min best index over widths),
      ``base_best`` (the best value at the first width), ``loss_at_base_best`` (per width, at the
      base width's best value), ``worse_with_width_at_base_best`` (the widths where that loss is
      higher than at the previous width by more than 1%), and ``wider_is_better_fraction`` (the
      fraction of (value, consecutive widths) pairs where the wider model is not worse, within
      1%).
    """
    idx = [per_width[str(w)]["best_index"] for w in widths]
    valid = [i for i in idx if i >= 0]
    base_idx = idx[0]
    at_base = [per_width[str(w)]["train_loss"][base_idx] for w in widths] if base_idx >= 0 else []
    worse = []
    for a, b, w in zip(at_base[:-1], at_base[1:], widths[1:], strict=False):
        if not (b <= a * 1.01 + 1e-6):
            worse.append(w)
    good = pairs = 0
    for j in range(len(values)):
        col = [per_width[str(w)]["train_loss"][j] for w in widths]
        for a, b in zip(col[:-1], col[1:], strict=False):
            if math.isfinite(a):
                pairs += 1
                good += int(b <= a * 1.01 + 1e-6)
    return {
        "best_per_width": {str(w): per_width[str(w)]["best"] for w in widths},
        "best_index_per_width": {str(w): i for w, i in zip(widths, idx, strict=True)},
        "best_shift_grid_steps": (max(valid) - min(valid)) if valid else None,
        "base_best": values[base_idx] if base_idx >= 0 else None,
        "loss_at_base_best": at_base,
        "worse_with_width_at_base_best": worse,
        "wider_is_better_fraction": good / pairs if pairs else None,
    }


def plot_sweep(results: Sequence[dict[str, Any]], path: str) -> None:
    """Loss against the swept value, one curve per width, one panel per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows), squeeze=False)
    for k, r in enumerate(results):
        ax = axes[k // cols][k % cols]
        widths = r["widths"]
        cmap = matplotlib.colormaps["viridis"]
        finite_max = 0.0
        for w in widths:
            res = r["results"][str(w)]
            y = np.asarray(res["train_loss"], np.float64)
            if np.any(np.isfinite(y)):
                finite_max = max(finite_max, float(np.nanmax(y[np.isfinite(y)])))
        for i, w in enumerate(widths):
            res = r["results"][str(w)]
            y = np.asarray(res["train_loss"], np.float64)
            color = cmap(i / max(1, len(widths) - 1))
            ax.plot(
                r["values"],
                np.where(np.isfinite(y), y, np.nan),
                marker="o",
                ms=3,
                color=color,
                label=f"width {w}",
            )
            b = res["best_index"]
            if b >= 0:
                ax.plot(
                    [r["values"][b]], [y[b]], marker="*", ms=11, color=color, markeredgecolor="k"
                )
        ax.set_xscale("log", base=2)
        cfg = r["config"]
        shift = r["summary"]["best_shift_grid_steps"]
        name = f"{cfg['optimizer']}/{cfg['param']}"
        if cfg["optimizer"] == "kfac":
            name += f" ({cfg['damping_rule']} damping)"
        if cfg.get("shampoo_graft", "none") != "none" and cfg["optimizer"] == "shampoo":
            name += f" ({cfg['shampoo_graft']} graft)"
        name += init_label(cfg)
        ax.set_title(f"{name}, {cfg['model']}: best moves {shift} grid steps", fontsize=9)
        ax.set_xlabel("learning rate" if r["over"] == "lr" else "damping ρ")
        ax.set_ylabel(f"train loss after {r['steps']} steps")
        if finite_max > 0:
            ax.set_ylim(top=finite_max * 1.05)
        ax.legend(fontsize=7)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
