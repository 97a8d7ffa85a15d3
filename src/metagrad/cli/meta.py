"""``metagrad meta``: meta-learning applications on a byte-level LM of real text.

* ``metagrad meta reweight``: learned data weighting with a fraction of corrupted sequences.
* ``metagrad meta lr``: learned per-layer learning rates against a grid of fixed ones.

Both write ``metrics.jsonl``, ``checkpoints/`` (a run in ``--out`` is resumed; ``--restart``), ``report.md`` and PNG
plots to ``--out``, the figures to ``--json``, and a memory report per differentiation mode.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metagrad.cli.arguments import (
    add_command,
    add_outputs,
    add_run_arguments,
    fail,
    fraction,
    non_negative_int,
    positive_int,
    positive_number,
    subcommands,
)

# Tiny sizes of ``--quick`` (a smoke test in seconds); explicit flags still override them.
QUICK: dict[str, Any] = {
    "width": 32,
    "depth": 1,
    "heads": 2,
    "seq": 32,
    "batch": 4,
    "outer_batch": 8,
    "steps": 2,
    "meta_steps": 3,
    "eval_sequences": 16,
    "eval_every": 1,
    "checkpoint_every": 2,
}
QUICK_REWEIGHT: dict[str, Any] = {**QUICK, "train_sequences": 64}
DEFAULT_BUDGET = "4GiB"


def _add_common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--text", help="a local text file or folder (default: the Python stdlib)")
    p.add_argument(
        "--mode",
        help="differentiation mode: mixflow (default), remat, reverse, or auto (the fastest mode "
        "and checkpoint schedule whose compiled memory fits --memory-budget)",
    )
    p.add_argument(
        "--steps", type=positive_int, help="inner steps T per meta-step (truncated unroll)"
    )
    p.add_argument("--meta-steps", type=positive_int, help="meta-steps (windows of T inner steps)")
    p.add_argument("--batch", type=positive_int, help="training sequences per inner step")
    p.add_argument(
        "--outer-batch", type=positive_int, help="validation sequences per meta-objective"
    )
    p.add_argument("--width", type=positive_int, help="LM width")
    p.add_argument("--depth", type=positive_int, help="LM blocks")
    p.add_argument("--heads", type=positive_int, help="attention heads")
    p.add_argument("--seq", type=positive_int, help="bytes per sequence")
    p.add_argument(
        "--eval-sequences", type=positive_int, help="validation sequences per evaluation"
    )
    p.add_argument("--eval-every", type=non_negative_int, help="evaluation period (meta-steps)")
    p.add_argument(
        "--checkpoint-every", type=non_negative_int, help="checkpoint period (meta-steps)"
    )
    p.add_argument("--seed", type=non_negative_int)
    p.add_argument(
        "--memory-budget",
        help=f"budget of the largest-T report, e.g. 4GiB (default {DEFAULT_BUDGET}), and of the "
        "meta-gradient with --mode auto; with --quick the report runs only if this is given",
    )
    p.add_argument(
        "--no-memory-report", action="store_true", help="skip the compiled-memory report"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test in seconds)")
    add_run_arguments(p, old_resume_flag="--resume")
    add_outputs(
        p,
        json_help="write the figures to this JSON file",
        out_help="run folder (default %(default)s)",
        out_default=out,
    )


def register(subparsers: Any) -> None:
    """Adds ``meta`` and its sub-commands to the ``metagrad`` parser."""
    meta = subparsers.add_parser("meta", help="meta-learning applications on a byte-level LM")
    sub = subcommands(meta, "meta_command")
    r = add_command(
        sub, "reweight", run=run_reweight, help="learned data weighting with corrupted sequences"
    )
    _add_common(r, "runs/meta-reweight")
    r.add_argument("--corruption", help="shuffle (default), random or domain")
    r.add_argument("--fraction", type=fraction, help="fraction of corrupted sequences (0.3)")
    r.add_argument("--weights", help="scorer (default) or per-example")
    r.add_argument("--scorer-hidden", type=positive_int, help="hidden units of the scorer")
    r.add_argument("--domain-text", help="out-of-domain text file for --corruption domain")
    r.add_argument("--train-sequences", type=positive_int, help="size of the training pool")
    r.add_argument("--lr", type=positive_number, help="inner Adam learning rate")
    r.add_argument("--meta-lr", type=positive_number, help="Adam learning rate of the weights")
    lr = add_command(
        sub, "lr", run=run_lr, help="learned per-layer learning rates vs a grid of fixed ones"
    )
    _add_common(lr, "runs/meta-lr")
    lr.add_argument("--grid", help="comma-separated fixed learning rates (5 by default)")
    lr.add_argument(
        "--init-lr", type=positive_number, help="initial learned rate (default: grid middle)"
    )
    lr.add_argument("--meta-lr", type=positive_number, help="Adam learning rate of the log-rates")


def _fail(command: str, message: str) -> SystemExit:
    return fail(f"metagrad meta {command}", message)


def _flag_message(text: str, fields: set[str]) -> str:
    """Names the command-line flag instead of the configuration field."""
    for name in sorted(fields, key=len, reverse=True):
        if any(text.startswith(name + sep) for sep in (" ", ":", "=")):
            return "--" + name.replace("_", "-") + text[len(name) :]
    return text


def _config(command: str, cls: Any, args: argparse.Namespace, quick: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    values = dict(quick) if args.quick else {}
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    # --memory-budget is the report's budget, and the run's too with --mode auto (in bytes).
    values.pop("memory_budget", None)
    if values.get("mode") == "auto":
        values["memory_budget"] = _budget(command, args)
    if isinstance(values.get("grid"), str):
        try:
            values["grid"] = tuple(float(x) for x in values["grid"].split(",") if x.strip())
        except ValueError:
            raise _fail(
                command, f"--grid must be comma-separated numbers; got {args.grid!r}."
            ) from None
    try:
        return cls(**values)
    except ValueError as err:
        raise _fail(command, _flag_message(str(err), fields)) from None


def _budget(command: str, args: argparse.Namespace) -> int:
    from metagrad.planner import parse_bytes

    text = args.memory_budget or DEFAULT_BUDGET
    try:
        return parse_bytes(text)
    except ValueError as err:
        raise _fail(command, f"--memory-budget: {err}") from None


def _load(command: str, prepare: Any, config: Any) -> Any:
    try:
        return prepare(config)
    except FileNotFoundError as err:
        flag = "--domain-text" if "domain_text" in str(err) else "--text"
        raise _fail(command, f"{flag}: {err}") from None
    except ValueError as err:
        text = str(err)
        flag = "--domain-text" if "domain" in text else "--text"
        raise _fail(command, f"{flag}: {_flag_message(text, {'train_sequences'})}") from None


def _train(command: str, args: argparse.Namespace, module: Any, config: Any, run: Any) -> Any:
    """Prepares the data and trains (resuming a run in ``--out``); the summary of the run."""
    from metagrad.bench.report import console
    from metagrad.checkpoints import latest_step
    from metagrad.runs import CHECKPOINTS

    step = latest_step(args.out / CHECKPOINTS)
    if args.restart and step is not None:
        console.print(f"--restart: the run in {args.out} moves to {args.out}/previous/")
    elif step is not None:
        console.print(f"resuming the run in {args.out} from step {step} (--restart starts over)")
    data = _load(command, module.prepare_data, config)
    try:
        return run(
            config, args.out, data=data, restart=args.restart, on_nonfinite=args.on_nonfinite
        )
    except ValueError as err:
        raise _fail(command, str(err)) from None


def _memory(build: Any, config: Any, args: argparse.Namespace, budget: int) -> list[dict]:
    from metagrad.autodiff import MODES
    from metagrad.bench.report import console, print_table
    from metagrad.meta.memory_report import memory_report

    if args.no_memory_report:
        return []
    if args.quick and args.memory_budget is None:
        # ~2·log2(T) compilations per mode take minutes even for the tiny model: a smoke test
        # reports memory only when asked for with an explicit budget.
        console.print("--quick: memory report skipped (give --memory-budget to run it)")
        return []
    rows = memory_report(build, MODES, config.steps, budget)
    print_table(
        f"meta-gradient memory per mode (compiled, T={config.steps}; largest T within "
        f"{budget / 2**30:g} GiB)",
        ["mode", "MiB at T", "largest T"],
        [[r["mode"], r["total_mib"], r["largest_steps"]] for r in rows],
    )
    return rows


def _experiment(
    command: str,
    args: argparse.Namespace,
    module: Any,
    config_type: type,
    quick: dict[str, Any],
    run: Callable[..., dict[str, Any]],
) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Configures, trains (resuming) and measures memory: ``(config, summary, memory report)``."""
    config = _config(command, config_type, args, quick)
    budget = _budget(command, args)
    summary = _train(command, args, module, config, run)
    memory = _memory(module.meta_gradient_builder(config), config, args, budget)
    return config, summary, memory


def _validation_plot(
    args: argparse.Namespace,
    config: Any,
    metrics: list[dict[str, Any]],
    title: str,
    styles: dict[str, dict[str, Any]],
) -> Path:
    """``OUT/validation.png``: the validation loss of every arm against inner steps."""
    from metagrad.meta import plots

    return plots.plot_validation_curves(
        metrics, args.out / "validation.png", steps_per_window=config.steps, title=title,
        styles=styles,
    )  # fmt: skip


def _report(
    args: argparse.Namespace,
    name: str,
    summary: dict[str, Any],
    memory: list[dict[str, Any]],
    plots: dict[str, Path],
    markdown: Callable[..., str],
    title: str,
) -> None:
    """The end of a ``meta`` experiment: ``OUT/report.md``, ``OUT/<name>.json`` (and ``--json``)
    and the table of the final validation and test losses of every arm."""
    from metagrad.bench.report import print_table
    from metagrad.cli.output import write_results
    from metagrad.files import write_text

    summary["memory"] = memory
    summary["plots"] = {k: str(v) for k, v in plots.items()}
    names = {k: v.name for k, v in plots.items()}
    write_text(args.out / "report.md", markdown(summary, memory, names))
    write_results(args, f"{name}.json", summary, quiet=True)
    final = summary["final"]
    print_table(
        title,
        ["arm", "val loss", "test loss", "s / meta-step"],
        [[a, v["val_loss"], v["test_loss"], summary["step_time_s"][a]] for a, v in final.items()],
    )


def run_reweight(args: argparse.Namespace) -> int:
    """``metagrad meta reweight``."""
    import numpy as np

    from metagrad.bench.report import console
    from metagrad.data.cache import save_npz_atomic
    from metagrad.meta import plots, reweight
    from metagrad.meta.report import reweight_markdown
    from metagrad.runs import read_metrics

    config, summary, memory = _experiment(
        "reweight", args, reweight, reweight.ReweightConfig, QUICK_REWEIGHT, reweight.run_reweight
    )
    weights, corrupted = summary.pop("weights"), summary.pop("corrupted")
    save_npz_atomic(args.out / "weights.npz", weights=weights, corrupted=corrupted)
    metrics = read_metrics(args.out / "metrics.jsonl")
    what = f"{config.corruption} p={config.fraction}, {config.weights} weights, T={config.steps}"
    paths = {
        "validation loss": _validation_plot(
            args,
            config,
            metrics,
            f"validation loss: uniform, oracle, learned\n({what})",
            {"oracle": {"ls": "--"}, "learned": {"lw": 2}},
        ),  # fmt: skip
        "learned weights": plots.plot_weight_histogram(
            weights,
            corrupted,
            args.out / "weights.png",
            title=f"learned weights, clean vs corrupted: ROC AUC {summary['auc']:.4f}\n({what})",
        ),  # fmt: skip
    }
    summary["histogram"] = {
        "bins": np.linspace(0, 1, 21).tolist(),
        "clean": np.histogram(weights[~corrupted], np.linspace(0, 1, 21))[0].tolist(),
        "corrupted": np.histogram(weights[corrupted], np.linspace(0, 1, 21))[0].tolist(),
    }
    _report(
        args, "reweight", summary, memory, paths, reweight_markdown,
        f"meta reweight ({what}; {summary['inner_steps']} inner steps per arm)",
    )  # fmt: skip
    console.print(
        f"ROC AUC {summary['auc']:.4f}; learned is "
        f"{'closer to the oracle' if summary['closer_to_oracle'] else 'NOT closer to the oracle'}"
        f" ({100 * (summary['gap_closed'] or 0):.0f}% of the gap closed); training "
        f"{summary['wall_s'] / 60:.1f} min; report {args.out / 'report.md'}"
    )
    return 0


def run_lr(args: argparse.Namespace) -> int:
    """``metagrad meta lr``."""
    from metagrad.bench.report import console
    from metagrad.meta import learning_rates, plots
    from metagrad.meta.report import lr_markdown
    from metagrad.runs import read_metrics

    config, summary, memory = _experiment(
        "lr", args, learning_rates, learning_rates.LRConfig, QUICK,
        learning_rates.run_learning_rates,
    )  # fmt: skip
    metrics = read_metrics(args.out / "metrics.jsonl")
    paths = {
        "validation loss": _validation_plot(
            args,
            config,
            metrics,
            f"validation loss: learned per-layer rates vs fixed rates (T={config.steps})",
            {"learned": {"lw": 2.5, "color": "k"}},
        ),  # fmt: skip
        "learned learning rates": plots.plot_learned_rates(
            metrics,
            config.grid,
            args.out / "learning_rates.png",
            steps_per_window=config.steps,
            title="learned per-layer learning rates over training",
        ),  # fmt: skip
    }
    _report(
        args, "lr", summary, memory, paths, lr_markdown,
        f"meta lr (T={config.steps}, {summary['inner_steps']} inner steps per arm)",
    )  # fmt: skip
    f, best = summary["final"], summary["best_grid"]
    console.print(
        f"learned {f['learned']['val_loss']:.4f} vs best fixed {best['arm']} "
        f"{best['val_loss']:.4f}: {'at least as low' if summary['learned_beats_best'] else 'higher'}"
        f"; meta-overhead × {summary['meta_overhead']:.2f}; training {summary['wall_s'] / 60:.1f}"
        f" min; report {args.out / 'report.md'}"
    )
    return 0
