"""Pattern selection: the fastest Lambda pattern whose accuracy is within ε of full adaptation.

Candidates are every pattern (exhaustive, when 2^(K·L) is small) or the structured family
(``patterns.structured_family``). Each candidate's adaptation time is measured (compiled,
wall-clock; the adaptation alone, and adaptation + query prediction) and its FLOPs read from XLA's
cost analysis; the choice is by adaptation time; accuracy is measured on meta-validation
tasks. With ``search="halving"`` accuracy is estimated in rounds on a doubling number of the same
tasks (paired comparisons): after each round the candidates whose accuracy is clearly below the
threshold (upper 95% bound below it) are dropped, and at most half survive, the fastest first.
The last round uses all ``tasks`` tasks.

References:
  Khabarlak 2022, arXiv:2206.05930 (Lambda patterns and their selection).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from metagrad.data import ClassDataset, episodes_at
from metagrad.fewshot.adaptation import Meta
from metagrad.fewshot.algorithms import Algorithm
from metagrad.fewshot.evaluation import evaluate
from metagrad.fewshot.measure import adaptation_flops, adaptation_time
from metagrad.fewshot.network import Model
from metagrad.fewshot.patterns import Pattern
from metagrad.files import save_figure
from metagrad.stats import mean_ci95


def select_pattern(
    model: Model,
    algorithm: Algorithm,
    meta: Meta,
    dataset: ClassDataset,
    candidates: Sequence[Pattern],
    *,
    ways: int,
    shots: int,
    queries: int = 15,
    epsilon: float = 0.01,
    tasks: int = 600,
    search: str = "halving",
    timing_tasks: int = 25,
    seed: int = 4321,
    reference: Pattern | None = None,
) -> dict[str, Any]:
    """Measures candidates and picks the fastest one with accuracy ≥ reference − ``epsilon``.

    Args:
      model: the meta-trained learner.
      algorithm: the meta-trained learner.
      meta: the meta-trained learner.
      dataset: meta-validation split.
      candidates: patterns to consider (all with the same K and L).
      ways: episode shape.
      shots: episode shape.
      queries: episode shape.
      epsilon: allowed accuracy loss as a fraction (0.01 = 1 point).
      tasks: validation tasks of the final accuracy estimates (≥ 600 for reporting).
      search: ``"exhaustive"`` (every candidate on all tasks) or ``"halving"``.
      timing_tasks: tasks per timed batch (default 25, the batch of ``evaluate``, so the
        timed program is the one the accuracy estimates reuse).
      seed: episode seed (the same tasks for every candidate).
      reference: the full-adaptation pattern (default: every layer at every step).

    Returns:
      ``{"rows": [...], "reference": row, "choice": row, "threshold_pct": ...,
      "best": {...}}``; each row has ``pattern``, ``name``, ``accuracy_pct``, ``ci95_pct``,
      ``tasks``, ``time_ms`` (adaptation alone: support set in, adapted parameters out, per
      task), ``total_ms`` (adaptation + query prediction, the program ``evaluate`` runs),
      ``mflops`` (adaptation + prediction), ``speedup`` and ``speedup_total`` (full adaptation's
      time / this pattern's), ``delta_pct`` and ``delta_ci95_pct`` (the
      paired difference to the reference on the same tasks, ± its 95% CI). ``best`` is the most
      accurate non-reference pattern measured on all tasks, with ``beats_reference`` (its paired
      difference is > 0) and ``significant`` (its paired 95% CI excludes 0).
    """
    if search not in ("exhaustive", "halving"):
        raise ValueError(f"search must be 'exhaustive' or 'halving'; got {search!r}.")
    if not candidates:
        raise ValueError("select_pattern: candidates is empty; pass at least one pattern.")
    k, n = candidates[0].steps, candidates[0].layers
    reference = reference or Pattern.full(k, n)
    pool = list({p.matrix: p for p in [reference, *candidates]}.values())
    timing = tuple(episodes_at(dataset, ways, shots, queries, timing_tasks, seed + 1, 0))
    one = jax.tree.map(lambda a: a[0], timing)
    rows: dict[tuple, dict[str, Any]] = {}
    per_task: dict[tuple, np.ndarray] = {}
    for p in pool:
        t = adaptation_time(model, algorithm, meta, timing, p, predict=False)
        tp = adaptation_time(model, algorithm, meta, timing, p, predict=True)
        f = adaptation_flops(model, algorithm, meta, one, p)
        rows[p.matrix] = {
            "pattern": p.code,
            "name": p.name,
            "time_ms": t["per_task_ms"],
            "total_ms": tp["per_task_ms"],
            "mflops": f["total"] / 1e6,
        }

    def measure(p: Pattern, n_tasks: int) -> None:
        ev = evaluate(
            model,
            algorithm,
            meta,
            dataset,
            ways=ways,
            shots=shots,
            queries=queries,
            tasks=n_tasks,
            seed=seed,
            pattern=p,
        )
        rows[p.matrix].update(ev.as_dict())
        per_task[p.matrix] = ev.per_task

    measure(reference, tasks)
    ref = rows[reference.matrix]
    threshold = ref["accuracy_pct"] - 100 * epsilon
    alive = [p for p in pool if p.matrix != reference.matrix]
    if search == "halving":
        n_tasks = max(50, tasks // 8)
        while n_tasks < tasks and len(alive) > 2:
            for p in alive:
                measure(p, n_tasks)
            feasible = [
                p
                for p in alive
                if rows[p.matrix]["accuracy_pct"] + rows[p.matrix]["ci95_pct"] >= threshold
            ]
            feasible.sort(key=lambda p: rows[p.matrix]["time_ms"])
            alive = feasible[: max(2, (len(feasible) + 1) // 2)]
            n_tasks *= 2
    for p in alive:
        measure(p, tasks)
    ref_tasks = per_task[reference.matrix]
    for matrix, row in rows.items():
        row["speedup"] = ref["time_ms"] / row["time_ms"]
        row["speedup_total"] = ref["total_ms"] / row["total_ms"]
        row["final"] = row.get("tasks") == tasks
        if matrix in per_task:
            acc = per_task[matrix]
            delta, ci = mean_ci95(acc - ref_tasks[: len(acc)])
            row["delta_pct"], row["delta_ci95_pct"] = 100 * delta, 100 * ci
    table = list(rows.values())
    ok = [r for r in table if r["final"] and r["accuracy_pct"] >= threshold]
    choice = min(ok, key=lambda r: r["time_ms"])
    others = [r for r in table if r["final"] and r is not ref]
    best: dict[str, Any] = {}
    if others:
        b = max(others, key=lambda r: r["accuracy_pct"])
        best = {
            "pattern": b["pattern"],
            "name": b["name"],
            "accuracy_pct": b["accuracy_pct"],
            "delta_pct": b["delta_pct"],
            "delta_ci95_pct": b["delta_ci95_pct"],
            "beats_reference": b["delta_pct"] > 0,
            "significant": abs(b["delta_pct"]) > b["delta_ci95_pct"],
        }
    return {
        "rows": table,
        "reference": ref,
        "choice": choice,
        "best": best,
        "threshold_pct": threshold,
        "epsilon_pct": 100 * epsilon,
        "search": search,
        "tasks": tasks,
    }


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated in (lower time, higher accuracy), sorted by time."""
    final = sorted((r for r in rows if r.get("final")), key=lambda r: r["time_ms"])
    front, best = [], -np.inf
    for r in final:
        if r["accuracy_pct"] > best:
            front.append(r)
            best = r["accuracy_pct"]
    return front


def plot_selection(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """PNG of accuracy vs adaptation time: every measured pattern, the Pareto front, the choice.

    Patterns measured on all tasks are filled and labelled; those that successive halving
    screened out on fewer tasks are hollow (their accuracy is from those tasks).
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r for r in result["rows"] if r.get("final")]
    screened = [r for r in result["rows"] if not r.get("final") and "accuracy_pct" in r]
    fig, ax = plt.subplots(figsize=(8, 5))

    def points(selected: list[dict[str, Any]], label: str, **style: Any) -> None:
        xs, ys = [r["time_ms"] for r in selected], [r["accuracy_pct"] for r in selected]
        ax.errorbar(xs, ys, yerr=[r["ci95_pct"] for r in selected], fmt="o", ms=4, label=label,
                    **style)  # fmt: skip

    if screened:
        points(screened, "screened out (fewer tasks)", mfc="none", color="0.75")
    points(rows, f"patterns ({result.get('tasks', '?')} tasks)", color="0.4")
    for r in rows:
        ax.annotate(
            r["name"], (r["time_ms"], r["accuracy_pct"]), fontsize=7, xytext=(4, 3),
            textcoords="offset points",
        )  # fmt: skip
    front = pareto_front(rows)
    ax.plot(
        [r["time_ms"] for r in front],
        [r["accuracy_pct"] for r in front],
        "-",
        color="C0",
        label="Pareto front",
    )
    ref, choice = result["reference"], result["choice"]
    ax.plot(ref["time_ms"], ref["accuracy_pct"], "s", color="C1", ms=9, label="full adaptation")
    ax.plot(
        choice["time_ms"],
        choice["accuracy_pct"],
        "*",
        color="C3",
        ms=14,
        label=f"choice {choice['name']} ({choice['speedup']:.1f}x faster)",
    )
    ax.axhline(result["threshold_pct"], ls=":", color="C3", label="full − ε")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("adaptation time per task (ms, compiled; support set → adapted weights)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or "Lambda pattern selection")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
