"""The Markdown report of a few-shot run folder: training, evaluations and pattern selections.

``metagrad fewshot train``, ``eval`` and ``select`` all write into one run folder (``--out``). Each
of them calls :func:`write_report` when it finishes, which rebuilds ``report.md`` from whatever the
folder holds: ``metrics.jsonl`` and ``curve.png`` of training, every ``eval_*.json``, and every
``selection_K*.json`` with its PNG. The report is therefore always complete and never stale, and a
reader sees the figures and the plots on one page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metagrad import checkpoints, markdown
from metagrad.files import write_text

REPORT = "report.md"


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Writes ``run_dir/report.md`` from the run's artefacts (atomically).

    Args:
      run_dir: a ``metagrad fewshot train --out`` folder.

    Returns:
      The path of the report.
    """
    run_dir = Path(run_dir)
    config = _config(run_dir)
    title = "Few-shot run"
    if config:
        title = (
            f"{config['dataset']} {config['ways']}-way {config['shots']}-shot "
            f"{config['algorithm']} ({config['mode']})"
        )
    parts = [f"# {title}\n", f"Run folder: `{run_dir}`.\n"]
    parts += _training_section(run_dir, config)
    parts += _evaluation_section(run_dir)
    for path in sorted(run_dir.glob("selection_K*.json")):
        parts += _selection_section(path)
    return write_text(run_dir / REPORT, "\n".join(parts))


def _config(run_dir: Path) -> dict[str, Any]:
    for name in ("train.json", *sorted(p.name for p in run_dir.glob("eval_*.json"))):
        path = run_dir / name
        if path.exists():
            return json.loads(path.read_text()).get("config", {})
    checkpoint_dir = run_dir / "checkpoints"
    if checkpoints.latest_step(checkpoint_dir) is not None:
        # A run trained from Python (no CLI JSON): the checkpoint's metadata has it.
        return dict(checkpoints.load_metadata(checkpoint_dir).metadata["config"])
    return {}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1 else f"{value:,.2f}"
    return markdown.number(value)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return markdown.table(columns, rows, cell=_cell) + "\n"


_OPTIONAL_SETTINGS = ("proximal", "inner_momentum", "cg_steps", "cg_damping",
                      "cg_negative_curvature", "stationarity_tol", "cg_max_gain",
                      "outer_clip")  # fmt: skip


def _training_section(run_dir: Path, config: dict[str, Any]) -> list[str]:
    parts = ["## Training\n"]
    if config:
        keys = ("ways", "shots", "queries", "steps", "test_steps", "algorithm", "mode", "pattern",
                "inner_lr", "outer_lr", "outer_lr_schedule", "meta_batch", "iterations", "seed",
                "channels")  # fmt: skip
        # The inner-loop options of iMAML and momentum: listed when a run sets them.
        keys += tuple(k for k in _OPTIONAL_SETTINGS if config.get(k) is not None)
        parts.append(_table(["setting", "value"], [[k, config.get(k)] for k in keys]))
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return [*parts, "No `metrics.jsonl` yet: run `metagrad fewshot train` first.\n"]
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x]
    train = [x for x in lines if x["kind"] == "train"]
    val = [x for x in lines if x["kind"] == "val"]
    if train:
        tail = train[-50:]
        loss = sum(x["loss"] for x in tail) / len(tail)
        accuracy = 100 * sum(x["accuracy"] for x in tail) / len(tail)
        step_s = sorted(x["time_s"] for x in tail)[len(tail) // 2]
        parts.append(
            f"{len(train)} meta-steps logged. Over the last {len(tail)}: training loss "
            f"{loss:.3f}, training accuracy {accuracy:.1f}%, median {step_s:.2f} s per step.\n"
        )
        kept = [x["stationary"] for x in train if "stationary" in x]
        if kept:  # --stationarity-tol: how many tasks gave a meta-gradient
            parts.append(
                f"Tasks left out of the meta-gradient (inner loop not stationary): "
                f"{100 * (1 - sum(kept) / len(kept)):.2f}% over {len(kept)} meta-steps.\n"
            )
    if val:
        rows = [[x["step"], x["accuracy_pct"], x["ci95_pct"], x["tasks"]] for x in val]
        parts += ["Validation:\n", _table(["step", "accuracy %", "± 95% CI", "tasks"], rows)]
    if (run_dir / "curve.png").exists():
        parts.append("![training curve](curve.png)\n")
    return parts


def _evaluation_section(run_dir: Path) -> list[str]:
    paths = sorted(run_dir.glob("eval_*.json"))
    if not paths:
        return []
    rows = []
    for path in paths:
        e = json.loads(path.read_text())
        rows.append([f"`{path.name}`", e["split"], e.get("pattern") or "full", e["queries"],
                     e["test_steps"], e["accuracy_pct"], e["ci95_pct"], e["tasks"]])  # fmt: skip
    columns = ["file", "split", "pattern", "queries/class", "inner steps", "accuracy %",
               "± 95% CI", "tasks"]  # fmt: skip
    return ["## Evaluation\n", _table(columns, rows)]


def _selection_section(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    rows = sorted((r for r in result["rows"] if r["final"]), key=lambda r: r["time_ms"])
    ref, choice, best = result["reference"], result["choice"], result.get("best")
    k = len(ref["pattern"].split("/"))
    parts = [
        f"## Lambda pattern selection, K = {k}\n",
        f"ε = {result['epsilon_pct']:.2f} accuracy points, {result['tasks']} validation tasks, "
        f"search: {result['search']}. Full adaptation: {ref['accuracy_pct']:.2f}% ± "
        f"{ref['ci95_pct']:.2f}%, {ref['time_ms']:.2f} ms per task.\n",
        f"**Choice: `{choice['pattern']}` ({choice['name']})**, {choice['accuracy_pct']:.2f}% ± "
        f"{choice['ci95_pct']:.2f}%, adaptation {choice['speedup']:.2f}x faster "
        f"({choice['speedup_total']:.2f}x including the query prediction).\n",
    ]
    if best:
        verdict = "beats" if best["beats_reference"] else "does not beat"
        significance = "significant" if best["significant"] else "not significant"
        parts.append(
            f"Most accurate other pattern: `{best['pattern']}` ({best['name']}) "
            f"{best['accuracy_pct']:.2f}%, {verdict} full adaptation by {best['delta_pct']:+.2f} "
            f"± {best['delta_ci95_pct']:.2f} points (paired, {significance} at 95%).\n"
        )
    columns = ["pattern", "name", "accuracy %", "± CI", "Δ vs full", "adapt ms", "speed-up",
               "MFLOP"]  # fmt: skip
    table_rows = [
        [f"`{r['pattern']}`", r["name"], r["accuracy_pct"], r["ci95_pct"], r["delta_pct"],
         r["time_ms"], r["speedup"], r["mflops"]]
        for r in rows
    ]  # fmt: skip
    parts.append(_table(columns, table_rows))
    plot = Path(result.get("plot", ""))
    if plot.name and (path.parent / plot.name).exists():
        parts.append(f"![selection K={k}]({plot.name})\n")
    return parts


__all__ = ["REPORT", "write_report"]
