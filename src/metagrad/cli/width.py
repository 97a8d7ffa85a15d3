"""``metagrad width``: μP coordinate checks and hyper-parameter transfer sweeps across widths.

Examples::

    metagrad width coord-check --optimizer kfac,shampoo --param sp,mup \\
        --widths 64,128,256,512,1024,2048 --out runs/coord --json runs/coord.json
    metagrad width sweep --optimizer kfac --param sp,mup --widths 64,256,1024 \\
        --lrs 2^-8:2^0 --steps 200 --seeds 2 --out runs/sweep --json runs/sweep.json
    metagrad width sweep --optimizer kfac --over damping --lr 0.25 --values 2^-12:2^-2
    metagrad width coord-check --model lm --optimizer adam,kfac,shampoo --param sp,mup \
        --widths 64,128,256,512 --depth 2 --batch-size 16 --seq-len 32
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from metagrad.cli.arguments import (
    add_command,
    add_outputs,
    non_negative_int,
    non_negative_number,
    parse_list,
    parse_positive_ints,
    positive_int,
    positive_number,
    subcommands,
)
from metagrad.cli.output import write_results
from metagrad.optim.experiment import MODELS, WidthConfig
from metagrad.optim.kfac import DAMPING_RULES
from metagrad.optim.merge import infinities_as_strings
from metagrad.optim.parameterization import OPTIMIZERS, PARAMETERIZATIONS
from metagrad.optim.tasks import TASKS

COMMAND = "metagrad width"

# Base learning rates used when --lr is not given (tuned at width 64 on the synthetic task).
DEFAULT_LRS = {"sgd": 2.0**-4, "adam": 2.0**-9, "kfac": 2.0**-2, "shampoo": 2.0**-6}


def register(subparsers: Any) -> None:
    """Adds ``width`` with its sub-commands ``coord-check`` and ``sweep``."""
    width = subparsers.add_parser(
        "width", help="μP coordinate checks and learning-rate transfer across widths"
    )
    kinds = subcommands(width, "width_command")

    p = add_command(
        kinds,
        "coord-check",
        run=run_coord_check,
        help="train each width a few steps; plot each layer's feature update Δh against width",
        description="For every optimiser x parameterisation (x damping rule for K-FAC): train "
        "each width a few steps, measure mean |Δh| of every layer on a probe batch, fit the "
        "log-log slope against width (0 = width independent, the μP target).",
    )
    _common(p)
    p.add_argument("--widths", default="64,128,256,512,1024,2048", help="comma-separated")
    p.add_argument(
        "--lr", type=_lr, help="base learning rate, e.g. 0.01 or 2^-9 (default: per optimiser)"
    )
    p.add_argument(
        "--steps", type=positive_int, default=5, help="training steps per width (default 5)"
    )
    p.add_argument(
        "--seeds", type=positive_int, default=3, help="seeds averaged per width (default 3)"
    )
    p.add_argument(
        "--refresh", type=positive_int, default=1, help="K-FAC/Shampoo refresh interval (default 1)"
    )
    p.add_argument(
        "--tolerance", type=positive_number, default=0.1, help="|slope| bound for μP (0.1)"
    )
    p.add_argument(
        "--probe-size",
        type=positive_int,
        default=256,
        help="examples (LM: sequences) in the fixed probe batch where Δh is measured (256)",
    )

    p = add_command(
        kinds,
        "sweep",
        run=run_sweep,
        help="loss against learning rate (or K-FAC damping) for every width",
        description="Train every width x value x seed for a fixed number of steps; report the "
        "loss curves, the best value per width and how far it moves across widths.",
    )
    _common(p)
    p.add_argument("--widths", default="64,128,256,512,1024,2048", help="comma-separated")
    p.add_argument(
        "--over", choices=("lr", "damping"), default="lr", help="what to sweep (default lr)"
    )
    p.add_argument(
        "--lrs",
        "--values",
        dest="values",
        default="2^-8:2^1",
        help="the grid: comma-separated numbers (2^-3 allowed) or LOW:HIGH for every power of "
        "two in between (default 2^-8:2^1)",
    )
    p.add_argument("--lr", type=_lr, help="fixed learning rate of a damping sweep (2^-2 allowed)")
    p.add_argument(
        "--steps", type=positive_int, default=200, help="training steps per run (default 200)"
    )
    p.add_argument("--seeds", type=positive_int, default=2, help="seeds per point (default 2)")
    p.add_argument("--refresh", type=positive_int, default=10, help="refresh interval (default 10)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--optimizer", default="kfac,shampoo", help="comma-separated: " + ", ".join(OPTIMIZERS)
    )
    p.add_argument(
        "--param", default="sp,mup", help="comma-separated: " + ", ".join(PARAMETERIZATIONS)
    )
    p.add_argument(
        "--damping-rule",
        default="trace",
        help="K-FAC damping rules, comma-separated: " + ", ".join(DAMPING_RULES),
    )
    p.add_argument(
        "--damping", type=positive_number, default=1e-2, help="K-FAC damping ρ (default 1e-2)"
    )
    p.add_argument(
        "--shampoo-eps", type=positive_number, default=1e-4, help="Shampoo ε (default 1e-4)"
    )
    p.add_argument(
        "--shampoo-eps-mode",
        choices=("relative", "absolute"),
        default="relative",
        help="Shampoo ε relative to the largest eigenvalue (default) or absolute",
    )
    p.add_argument(
        "--shampoo-exponent", type=positive_number, default=0.25, help="Shampoo power (0.25 or 0.5)"
    )
    p.add_argument(
        "--shampoo-warmup",
        type=non_negative_int,
        default=0,
        help="Shampoo recomputes its roots at every one of the first N steps (default 0)",
    )
    p.add_argument(
        "--shampoo-graft",
        choices=("none", "sgd", "rmsprop"),
        default="none",
        help="Shampoo grafting: the update's norm per parameter from SGD or RMSprop (default none)",
    )
    p.add_argument(
        "--block-size", type=positive_int, default=1024, help="Shampoo block size (1024)"
    )
    p.add_argument(
        "--momentum", type=non_negative_number, default=0.0, help="heavy-ball momentum (default 0)"
    )
    p.add_argument(
        "--model",
        choices=MODELS,
        default="mlp",
        help="mlp (default), conv4, or lm (the decoder LM on --task text)",
    )
    p.add_argument(
        "--depth",
        type=positive_int,
        default=3,
        help="hidden layers of the MLP, blocks of the LM (3)",
    )
    p.add_argument(
        "--heads", type=positive_int, default=4, help="attention heads of the LM (default 4)"
    )
    p.add_argument(
        "--seq-len", type=positive_int, default=32,
        help="bytes per sequence of --task text (default 32)",
    )  # fmt: skip
    p.add_argument("--base-width", type=positive_int, default=64, help="base width (default 64)")
    p.add_argument(
        "--zero-readout",
        action="store_true",
        help="μP runs only (SP keeps its init): the read-out weights start at zero",
    )
    p.add_argument(
        "--b-trace-floor",
        type=non_negative_number,
        default=0.0,
        help="μP K-FAC, trace rule: the smallest tr(B) of the damping at the base width "
        "(scaled 1/fan_out_mult per layer); what lets K-FAC start from --zero-readout (default 0)",
    )
    p.add_argument(
        "--zero-query",
        action="store_true",
        help="μP runs of --model lm only: every query projection starts at zero",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=128, help="examples per step (default 128)"
    )
    p.add_argument("--task", choices=TASKS, help="data (default: synthetic; text for --model lm)")
    p.add_argument(
        "--task-seed", type=non_negative_int, default=0, help="seed of the data (default 0)"
    )
    p.add_argument(
        "--n-train", type=positive_int, default=8192, help="synthetic (or text) training examples"
    )
    p.add_argument(
        "--classes", type=positive_int, help="classes (synthetic default 10, glyphs 100)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_outputs(p, out_help="directory for artefacts (PNG plots, JSON copy)")


def parse_number(text: str) -> float:
    """``"0.5"``, ``"1e-3"`` or ``"2^-3"``."""
    text = text.strip()
    if "^" in text:
        base, _, exp = text.partition("^")
        return float(base) ** float(exp)
    return float(text)


def _lr(text: str) -> float:
    """argparse type of ``--lr``: a positive number, ``2^-k`` allowed."""
    try:
        value = parse_number(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number such as 0.01 or 2^-9; got {text!r}"
        )
    return value


def parse_values(text: str, flag: str) -> list[float]:
    """A grid: ``"a,b,c"`` or ``"LOW:HIGH"`` (every power of two between, inclusive)."""
    try:
        if ":" in text:
            low, high = (parse_number(t) for t in text.split(":", 1))
            if not (low > 0 and high >= low):
                raise ValueError
            k0, k1 = round(math.log2(low)), round(math.log2(high))
            return [2.0**k for k in range(k0, k1 + 1)]
        values = [parse_number(t) for t in text.split(",") if t.strip()]
        if not values or any(not v > 0 for v in values):
            raise ValueError
        return values
    except ValueError:
        raise SystemExit(
            f"metagrad width: {flag} takes positive numbers 'a,b,c' (2^-3 allowed) or a power-of-"
            f"two range 'LOW:HIGH' such as 2^-8:2^0; got {text!r}."
        ) from None


def parse_widths(text: str) -> list[int]:
    """Comma-separated positive integers (sorted, without repeats)."""
    return parse_positive_ints(text, "--widths", COMMAND, "64,128,256")


def _task(args: argparse.Namespace):
    from metagrad.optim.tasks import load_task

    task = args.task or ("text" if args.model == "lm" else "synthetic")
    if (task == "text") != (args.model == "lm"):
        raise SystemExit(
            f"{COMMAND}: --model lm trains on --task text, and --task text needs --model lm; got "
            f"--model {args.model} --task {task}."
        )
    if task == "text":
        kwargs = {
            "seq_len": args.seq_len,
            "n_train": args.n_train,
            "progress": not args.no_progress,
        }
    elif task == "synthetic":
        kwargs = {"n_train": args.n_train}
        if args.classes:
            kwargs["n_classes"] = args.classes
    else:
        kwargs = {"n_classes": args.classes or 100, "progress": not args.no_progress}
    return load_task(task, seed=args.task_seed, **kwargs)


def _configs(args: argparse.Namespace, optimizers, params, rules) -> list[WidthConfig]:
    # Every WidthConfig field that is also a flag of this command comes from the flag.
    from_flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(WidthConfig)
        if f.name not in ("optimizer", "param", "damping_rule") and hasattr(args, f.name)
    }
    return [
        WidthConfig(optimizer=opt, param=param, damping_rule=rule, **from_flags)
        for opt in optimizers
        for param in params
        for rule in (rules if opt == "kfac" else rules[:1])
    ]


def run_coord_check(args: argparse.Namespace) -> int:
    """The ``coord-check`` sub-command."""
    from rich.console import Console
    from rich.table import Table

    from metagrad.optim.coord_check import coord_check, plot_coord_checks, summarize

    optimizers = parse_list(args.optimizer, OPTIMIZERS, "--optimizer", COMMAND)
    params = parse_list(args.param, PARAMETERIZATIONS, "--param", COMMAND)
    rules = parse_list(args.damping_rule, DAMPING_RULES, "--damping-rule", COMMAND)
    widths = parse_widths(args.widths)
    task = _task(args)
    results = []
    for config in _configs(args, optimizers, params, rules):
        lr = args.lr if args.lr is not None else DEFAULT_LRS[config.optimizer]
        r = coord_check(
            config,
            widths,
            task,
            lr=lr,
            steps=args.steps,
            seeds=args.seeds,
            probe_size=args.probe_size,
            progress=not args.no_progress,
        )
        r["summary"] = summarize(r, args.tolerance)
        results.append(r)
    console = Console()
    table = Table(title=f"coordinate check: fitted slope of log2 Δh vs log2 width ({task.name})")
    table.add_column("optimizer")
    table.add_column("param")
    table.add_column("damping")
    n_layers = max(len(r["layers"]) for r in results)
    for j in range(n_layers):
        table.add_column(results[-1]["layers"][j] if j < len(results[-1]["layers"]) else str(j))
    table.add_column(f"all |slope| ≤ {args.tolerance}")
    for r in results:
        cfg = r["config"]
        rule = cfg["damping_rule"] if cfg["optimizer"] == "kfac" else "-"
        cells = [f"{r['slopes'][k]:+.3f}" for k in r["layers"]]
        table.add_row(
            cfg["optimizer"], cfg["param"], rule, *cells, str(r["summary"]["all_within_tolerance"])
        )
    console.print(table)
    payload = infinities_as_strings({"task": task.name, "widths": widths, "coord_checks": results})
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "coord_check.png"
        plot_coord_checks(results, str(path))
        console.print(f"wrote {path}")
    write_results(args, "coord_check.json", payload)
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """The ``sweep`` sub-command."""
    from rich.console import Console
    from rich.table import Table

    from metagrad.optim.sweep import plot_sweep, sweep

    optimizers = parse_list(args.optimizer, OPTIMIZERS, "--optimizer", COMMAND)
    params = parse_list(args.param, PARAMETERIZATIONS, "--param", COMMAND)
    rules = parse_list(args.damping_rule, DAMPING_RULES, "--damping-rule", COMMAND)
    widths = parse_widths(args.widths)
    values = parse_values(args.values, "--lrs/--values")
    if args.over == "damping" and optimizers != ["kfac"]:
        raise SystemExit(
            f"metagrad width sweep: --over damping needs --optimizer kfac; got {args.optimizer!r}."
        )
    task = _task(args)
    results = []
    for config in _configs(args, optimizers, params, rules):
        lr = None
        if args.over == "damping":
            lr = args.lr if args.lr is not None else DEFAULT_LRS["kfac"]
        results.append(
            sweep(
                config,
                widths,
                values,
                task,
                over=args.over,
                lr=lr,
                steps=args.steps,
                seeds=args.seeds,
                progress=not args.no_progress,
            )
        )
    console = Console()
    table = Table(
        title=f"{args.over} sweep: best value per width ({task.name}, {args.steps} steps)"
    )
    for col in ("optimizer", "param", "damping", *map(str, widths), "shift (grid steps)"):
        table.add_column(col)
    for r in results:
        cfg = r["config"]
        s = r["summary"]
        rule = cfg["damping_rule"] if cfg["optimizer"] == "kfac" else "-"
        best = [_fmt(s["best_per_width"][str(w)]) for w in widths]
        table.add_row(cfg["optimizer"], cfg["param"], rule, *best, str(s["best_shift_grid_steps"]))
    console.print(table)
    payload = infinities_as_strings(
        {"task": task.name, "widths": widths, "values": values, "sweeps": results}
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"sweep_{args.over}.png"
        plot_sweep(results, str(path))
        console.print(f"wrote {path}")
    write_results(args, f"sweep_{args.over}.json", payload)
    return 0


def _fmt(v: float | None) -> str:
    if v is None:
        return "diverged"
    k = math.log2(v)
    return f"2^{k:.0f}" if abs(k - round(k)) < 1e-9 else f"{v:.3g}"
