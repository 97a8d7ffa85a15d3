"""Markdown reports of the two applications (written to ``--out/report.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metagrad.markdown import table as _table


def memory_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The memory table: compiled memory at T and the largest T within the budget, per mode."""
    if not rows:
        return "_Memory report skipped (`--no-memory-report`)._\n"
    budget = rows[0]["budget_mib"]
    steps = rows[0]["steps"]
    table = _table(
        ["mode", f"compiled MiB at T={steps}", f"largest T within {budget / 1024:g} GiB"],
        [
            [
                r["mode"],
                f"{r['total_mib']:,.1f}",
                ("≥ " if r["limit_reached"] else "") + f"{r['largest_steps']:,}",
            ]
            for r in rows
        ],
    )
    return (
        "Compiled peak memory (XLA memory analysis: temp + arguments + outputs) of the meta-"
        "gradient of one window, compile only, and the largest T whose meta-gradient fits the "
        "budget (`metagrad.planner.largest_fitting_steps`).\n\n" + table + "\n"
    )


def reweight_markdown(
    summary: dict[str, Any], memory: Sequence[dict[str, Any]], plots: dict[str, str]
) -> str:
    """The report of ``metagrad meta reweight``."""
    c = summary["config"]
    f = summary["final"]
    rows = [
        [arm, f[arm]["val_loss"], f[arm]["test_loss"], summary["step_time_s"][arm]]
        for arm in ("uniform", "oracle", "learned")
    ]
    verdict = "closer to the oracle" if summary["closer_to_oracle"] else "not closer to the oracle"
    return "\n".join(
        [
            "# Learned data weighting",
            "",
            f"Byte-level decoder LM ({summary['n_params']:,} parameters: width {c['width']}, "
            f"{c['depth']} layers, sequences of {c['seq']} bytes) on `{summary['source']}`. "
            f"{c['fraction']:.0%} of {c['train_sequences']:,} training sequences corrupted "
            f"(`{c['corruption']}`). Weights: `{c['weights']}`, meta-learned online through "
            f"T={c['steps']} inner Adam steps (lr {c['lr']:g}) per meta-step, mode `{c['mode']}`, "
            f"{c['meta_steps']} meta-steps = {summary['inner_steps']:,} inner steps per arm, "
            f"batch {c['batch']}.",
            "",
            _table(["arm", "validation loss", "test loss", "s / meta-step"], rows),
            "",
            f"* ROC AUC of the learned weights (clean vs corrupted): **{summary['auc']:.4f}**; "
            f"mean weight clean {summary['weight_mean_clean']:.3f}, corrupted "
            f"{summary['weight_mean_corrupted']:.3f}.",
            f"* Learned weighting is **{verdict}** (it closes "
            f"{100 * (summary['gap_closed'] or 0):.0f}% of the uniform → oracle gap in "
            "validation loss).",
            f"* Meta-step time ÷ plain window time: {summary['meta_overhead']:.2f}; wall-clock of "
            f"the training (all arms): {summary['wall_s'] / 60:.1f} min.",
            f"* Visits per training sequence: min {summary['visits_min']}, mean "
            f"{summary['visits_mean']:.1f}.",
            "",
            *_memory_and_plots(memory, plots),
        ]
    )


def lr_markdown(
    summary: dict[str, Any], memory: Sequence[dict[str, Any]], plots: dict[str, str]
) -> str:
    """The report of ``metagrad meta lr``."""
    c = summary["config"]
    f = summary["final"]
    rows = [[arm, v["val_loss"], v["test_loss"], summary["step_time_s"][arm]] for arm, v in
            f.items()]  # fmt: skip
    best = summary["best_grid"]
    verdict = "at least as low as" if summary["learned_beats_best"] else "higher than"
    lrs = ", ".join(f"{k} {v:.2e}" for k, v in summary["learned_lrs"].items())
    return "\n".join(
        [
            "# Learned learning rates",
            "",
            f"Byte-level decoder LM ({summary['n_params']:,} parameters: width {c['width']}, "
            f"{c['depth']} layers, sequences of {c['seq']} bytes) on `{summary['source']}`. "
            f"Per-layer learning rates of the inner Adam meta-learned online through T="
            f"{c['steps']} steps per meta-step (mode `{c['mode']}`, meta Adam lr {c['meta_lr']:g}, "
            f"initial rate {summary['config'].get('init_lr') or 'the grid middle'}), against a "
            f"grid of fixed rates; {summary['inner_steps']:,} inner steps of batch {c['batch']} "
            "per arm, the same batches for every arm.",
            "",
            _table(["arm", "validation loss", "test loss", "s / step"], rows),
            "",
            f"* Learned rates reach a validation loss **{verdict}** the best fixed rate "
            f"({best['arm']}: {best['val_loss']:.4f}; learned {f['learned']['val_loss']:.4f}, "
            f"margin {summary['margin_vs_best']:+.4f}).",
            f"* Final learned rates: {lrs}.",
            f"* Meta-overhead: a meta-step takes {summary['meta_step_s']:.3f} s against "
            f"{summary['plain_window_s']:.3f} s for a plain window of the same T steps "
            f"(× {summary['meta_overhead']:.2f}); wall-clock of the training (all arms): "
            f"{summary['wall_s'] / 60:.1f} min.",
            "",
            *_memory_and_plots(memory, plots),
        ]
    )


def _memory_and_plots(memory: Sequence[dict[str, Any]], plots: dict[str, str]) -> list[str]:
    """The two closing sections that both reports share."""
    return [
        "## Memory",
        "",
        memory_markdown(memory),
        "## Plots",
        "",
        *[f"![{name}]({path})" for name, path in plots.items()],
        "",
    ]
