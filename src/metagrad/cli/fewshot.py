"""``metagrad fewshot``: meta-train, evaluate and select Lambda patterns (MAML family)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from metagrad.cli.arguments import (
    add_command,
    add_outputs,
    add_run_arguments,
    byte_size,
    fail,
    momentum,
    non_negative_int,
    non_negative_number,
    positive_int,
    positive_number,
    run_folder,
    subcommands,
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="glyphs", help="glyphs (built in), omniglot, miniimagenet")
    p.add_argument("--data-root", help="folder of an on-disk dataset (omniglot, miniimagenet)")
    p.add_argument("--ways", type=positive_int, default=5)
    p.add_argument("--shots", type=positive_int, default=1)
    p.add_argument("--queries", type=positive_int, default=15, help="query examples per class")
    p.add_argument("--steps", type=positive_int, default=5, help="inner steps during meta-training")
    p.add_argument(
        "--algorithm", default="maml", help="maml, fomaml, anil, boil, metasgd, mamlpp, imaml"
    )
    p.add_argument(
        "--mode", default="mixflow", help="mixflow, remat, reverse, auto (see --memory-budget)"
    )
    p.add_argument("--pattern", help="Lambda pattern used in training, e.g. 00001/11111")
    p.add_argument("--inner-lr", type=positive_number, default=0.4)
    p.add_argument("--outer-lr", type=positive_number, default=1e-3)
    p.add_argument("--meta-batch", type=positive_int, default=8)
    p.add_argument("--iterations", type=positive_int, default=1000)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--channels", type=positive_int, default=64)
    add_outputs(
        p,
        json_help="write the figures to this JSON file",
        out_help="run folder",
        out_default="runs/fewshot",
    )


def register(subparsers: Any) -> None:
    """Adds ``fewshot`` and its sub-commands to the ``metagrad`` parser."""
    fewshot = subparsers.add_parser("fewshot", help="few-shot meta-learning (MAML family)")
    sub = subcommands(fewshot, "fewshot_command")
    t = add_command(sub, "train", run=run_train, help="meta-train (resumes from OUT/checkpoints)")
    _add_common(t)
    t.add_argument("--test-steps", type=positive_int, help="inner steps at validation/test time")
    t.add_argument("--val-every", type=non_negative_int, default=200)
    t.add_argument("--val-tasks", type=positive_int, default=200)
    t.add_argument("--checkpoint-every", type=non_negative_int, default=100)
    t.add_argument(
        "--memory-budget",
        type=byte_size,
        help="with --mode auto: bytes of one task's inner loop, e.g. 256MiB (default: no limit; "
        "tasks are vmapped, so a meta-batch of B tasks needs about B times that)",
    )
    t.add_argument(
        "--proximal",
        type=non_negative_number,
        help="λ of the proximal term λ/2 ‖θ − θ₀‖² in the inner loss (default: imaml 2, others 0)",
    )
    t.add_argument(
        "--cg-steps",
        type=positive_int,
        help="conjugate-gradient steps of the implicit meta-gradient (imaml only; default 5)",
    )
    t.add_argument(
        "--cg-damping",
        type=non_negative_number,
        help="ridge δ of the implicit system: λ (H + (λ + δ) I)⁻¹ ∇L_query (imaml only; default 0)",
    )
    t.add_argument(
        "--cg-negative-curvature",
        help="continue (default: plain CG) or stop: the implicit solve returns the CG iterate "
        "before the first direction of non-positive curvature (imaml only)",
    )
    t.add_argument(
        "--stationarity-tol",
        type=positive_number,
        help="tasks whose inner loop ends with ‖∇ inner loss‖ above this give no meta-gradient "
        "(imaml only; default: every task does)",
    )
    t.add_argument(
        "--cg-max-gain",
        type=positive_number,
        help="cap a task's implicit meta-gradient at this multiple of its query gradient's norm "
        "(1: no longer than a positive semi-definite Hessian allows; imaml only; default: no cap)",
    )
    t.add_argument(
        "--outer-lr-schedule",
        help="constant (default) or cosine: --outer-lr decayed to 0 over --iterations",
    )
    t.add_argument(
        "--outer-clip",
        type=positive_number,
        help="clip the meta-gradient to this global norm before Adam (default: no clipping; "
        "the norm is logged as grad_norm in metrics.jsonl)",
    )
    t.add_argument(
        "--inner-momentum",
        type=momentum,
        help="heavy-ball momentum β in [0, 1) of the inner optimiser (default 0: plain SGD; "
        "not for metasgd, mamlpp)",
    )
    add_run_arguments(t, old_resume_flag="--no-resume")
    from metagrad.cli.distributed_args import add_arguments as add_distributed_arguments

    # --devices / --mesh split the meta-batch across devices; without them: one device.
    add_distributed_arguments(t)
    e = add_command(
        sub, "eval", run=run_eval, help="test accuracy ± 95%% CI of a trained run (OUT)"
    )
    e.add_argument("--out", type=run_folder, required=True, help="run folder with checkpoints/")
    e.add_argument("--tasks", type=positive_int, default=600)
    e.add_argument("--split", default="test", help="test or val")
    e.add_argument("--test-steps", type=positive_int, help="inner steps (default: the run's)")
    e.add_argument("--pattern", help="test-time Lambda pattern")
    e.add_argument(
        "--queries", type=positive_int, help="query examples per class (default: the run's queries)"
    )
    e.add_argument(
        "--proximal",
        type=non_negative_number,
        help="test-time λ of the proximal term λ/2 ‖θ − θ₀‖² (default: the run's; 0: plain "
        "fine-tuning from θ₀, as the iMAML authors evaluate)",
    )
    add_outputs(e)
    s = add_command(
        sub, "select", run=run_select, help="select the fastest pattern within --threshold of full"
    )
    s.add_argument("--out", type=run_folder, required=True, help="run folder with checkpoints/")
    s.add_argument(
        "--threshold", type=non_negative_number, default=1.0, help="ε in accuracy points"
    )
    s.add_argument("--tasks", type=positive_int, default=600)
    s.add_argument("--search", default="auto", help="auto, exhaustive or halving")
    s.add_argument(
        "--steps", type=positive_int, help="inner steps K of the patterns (default: the run's)"
    )
    s.add_argument(
        "--queries", type=positive_int, help="query examples per class (default: the run's queries)"
    )
    add_outputs(s)


def _fail(command: str, message: str) -> SystemExit:
    return fail(f"metagrad fewshot {command}", message)


def _flag_message(text: str) -> str:
    """Names the command-line flag instead of the configuration field (``ways=`` → ``--ways``)."""
    from metagrad.fewshot.training import TrainConfig

    for name in sorted((f.name for f in dataclasses.fields(TrainConfig)), key=len, reverse=True):
        for sep in (" ", "=", ":"):
            if text.startswith(name + sep):
                return "--" + name.replace("_", "-") + text[len(name) :]
    return text


def _config(args: argparse.Namespace) -> Any:
    from metagrad.fewshot.training import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    try:
        return TrainConfig(**values)
    except ValueError as err:
        raise _fail("train", _flag_message(str(err))) from None


def run_train(args: argparse.Namespace) -> int:
    """``metagrad fewshot train``."""
    from metagrad.bench.report import console
    from metagrad.cli.output import write_results
    from metagrad.fewshot.algorithms import ALGORITHMS
    from metagrad.fewshot.patterns import Pattern

    if args.algorithm not in ALGORITHMS:
        raise _fail(
            "train", f"--algorithm must be one of {', '.join(ALGORITHMS)}; got {args.algorithm!r}."
        )
    if args.mode not in ("mixflow", "remat", "reverse", "auto"):
        raise _fail("train", f"--mode must be mixflow, remat, reverse or auto; got {args.mode!r}.")
    if args.memory_budget is not None and args.mode != "auto":
        raise _fail("train", f"--memory-budget applies to --mode auto; got --mode {args.mode}.")
    if args.pattern is not None:
        try:
            pattern = Pattern.parse(args.pattern)
        except ValueError as err:
            raise _fail("train", f"--pattern: {err}") from None
        if pattern.steps != args.steps:
            raise _fail("train", f"--pattern has {pattern.steps} rows but --steps is {args.steps}.")
    config = _config(args)
    from metagrad.cli.distributed_args import initialize_from_args, mesh_from_args
    from metagrad.fewshot.training import METRICS, plot_metrics, train

    try:
        initialize_from_args(args)
        sharded = args.mesh or args.devices is not None or args.params != "replicate"
        mesh = mesh_from_args(args) if sharded else None
    except ValueError as err:
        raise _fail("train", str(err)) from None
    if mesh is not None and config.meta_batch % mesh.shape["data"]:
        raise _fail(
            "train",
            f"--meta-batch {config.meta_batch} must be a multiple of the mesh's data axis "
            f"({mesh.shape['data']} devices); change --meta-batch, --devices or --mesh.",
        )
    try:
        result = train(
            config, args.out, restart=args.restart, on_nonfinite=args.on_nonfinite, mesh=mesh,
            params=args.params,
        )  # fmt: skip
    except ValueError as err:
        raise _fail("train", _flag_message(str(err))) from None
    curve = plot_metrics(
        args.out / METRICS,
        args.out / "curve.png",
        f"{config.dataset} {config.ways}-way {config.shots}-shot {config.algorithm} "
        f"(K={config.steps}, meta-batch {config.meta_batch})",
    )
    payload = {
        "config": dataclasses.asdict(config),
        "last": result["last"],
        "val": result["val"],
        "curve": str(curve),
    }
    write_results(args, "train.json", payload, quiet=True)
    console.print(f"trained {config.iterations} steps; run folder {args.out}")
    _report(args.out)
    return 0


def _load_run(command: str, out: Path) -> tuple[Any, Any, Any, Any]:
    from metagrad.fewshot.training import CHECKPOINTS, load_trained

    if not (out / CHECKPOINTS).exists():
        raise _fail(
            command,
            f"--out {out}: no {CHECKPOINTS}/ there; run `metagrad fewshot train --out {out}` "
            "first.",
        )
    try:
        run = load_trained(out)
    except (FileNotFoundError, ValueError) as err:
        raise _fail(command, f"--out {out}: {err}") from None
    return run.config, run.splits, run.model, run.meta


def _check_fits(
    command: str, split: Any, name: str, config: Any, queries: int, pattern: Any, model: Any
) -> None:
    from metagrad.fewshot.training import check_episodes_fit, check_pattern_fits

    try:
        check_episodes_fit(split, name, config.ways, config.shots, queries)
        if pattern is not None:
            check_pattern_fits(pattern, model)
    except ValueError as err:
        raise _fail(command, f"--out {config.dataset} run: {err}") from None


def run_eval(args: argparse.Namespace) -> int:
    """``metagrad fewshot eval``."""
    from metagrad.bench.report import console
    from metagrad.cli.output import write_results
    from metagrad.fewshot.algorithms import at_test_time
    from metagrad.fewshot.evaluation import evaluate
    from metagrad.fewshot.patterns import Pattern

    if args.split not in ("test", "val"):
        raise _fail("eval", f"--split must be test or val; got {args.split!r}.")
    if args.tasks < 1:
        raise _fail("eval", f"--tasks must be >= 1; got {args.tasks}.")
    if args.queries is not None and args.queries < 1:
        raise _fail("eval", f"--queries must be >= 1; got {args.queries}.")
    config, splits, model, meta = _load_run("eval", args.out)
    try:
        pattern = Pattern.parse(args.pattern) if args.pattern is not None else None
    except ValueError as err:
        raise _fail("eval", f"--pattern: {err}") from None
    if pattern is not None and args.test_steps and args.test_steps != pattern.steps:
        raise _fail(
            "eval", f"--pattern has {pattern.steps} rows but --test-steps is {args.test_steps}."
        )
    queries = args.queries or config.queries
    steps = args.test_steps or config.test_steps
    _check_fits("eval", getattr(splits, args.split), args.split, config, queries, pattern, model)
    algorithm = at_test_time(config.make_algorithm(), proximal=args.proximal)
    ev = evaluate(
        model,
        algorithm,
        meta,
        getattr(splits, args.split),
        ways=config.ways,
        shots=config.shots,
        queries=queries,
        tasks=args.tasks,
        pattern=pattern,
        steps=None if pattern is not None else steps,
    )
    payload = {
        "config": dataclasses.asdict(config),
        "split": args.split,
        "queries": queries,
        "test_steps": pattern.steps if pattern is not None else (steps or config.steps),
        "pattern": pattern.code if pattern is not None else None,
        "proximal": algorithm.proximal,
        **ev.as_dict(),
    }
    console.print(
        f"{config.dataset} {config.ways}-way {config.shots}-shot {config.algorithm} "
        f"({args.split}, {queries} queries/class, {payload['test_steps']} inner steps"
        + (f", proximal λ = {args.proximal:g}" if args.proximal is not None else "")
        + "): "
        f"{ev.as_dict()['accuracy_pct']:.2f}% ± {ev.as_dict()['ci95_pct']:.2f}% over {ev.tasks} tasks"
    )
    suffix = "" if pattern is None else "_" + pattern.code.replace("/", "-")
    suffix += "" if args.proximal is None else f"_proximal{args.proximal:g}"
    write_results(args, f"eval_{args.split}{suffix}.json", payload, quiet=True)
    _report(args.out)
    return 0


def run_select(args: argparse.Namespace) -> int:
    """``metagrad fewshot select``."""
    from metagrad.bench.report import console, print_table
    from metagrad.cli.output import write_results
    from metagrad.fewshot.patterns import all_patterns, structured_family
    from metagrad.fewshot.selection import plot_selection, select_pattern

    if not 0 <= args.threshold <= 100:
        raise _fail(
            "select", f"--threshold is ε in accuracy points, in [0, 100]; got {args.threshold}."
        )
    if args.search not in ("auto", "exhaustive", "halving"):
        raise _fail("select", f"--search must be auto, exhaustive or halving; got {args.search!r}.")
    if args.queries is not None and args.queries < 1:
        raise _fail("select", f"--queries must be >= 1; got {args.queries}.")
    config, splits, model, meta = _load_run("select", args.out)
    if config.make_algorithm().method == "implicit":
        raise _fail(
            "select",
            f"the run in {args.out} is {config.algorithm} (implicit meta-gradient), which adapts "
            "every layer at every step; Lambda patterns are selected for unrolled algorithms "
            "(maml, anil, ...).",
        )
    queries = args.queries or config.queries
    _check_fits("select", splits.val, "val", config, queries, None, model)
    k = args.steps or config.test_steps or config.steps
    n = len(meta["params"])
    exhaustive = args.search == "exhaustive" or (args.search == "auto" and 2 ** (k * n) <= 64)
    candidates = list(all_patterns(k, n)) if exhaustive else structured_family(k, n)
    result = select_pattern(
        model,
        config.make_algorithm(),
        meta,
        splits.val,
        candidates,
        ways=config.ways,
        shots=config.shots,
        queries=queries,
        epsilon=args.threshold / 100,
        tasks=args.tasks,
        search="exhaustive" if exhaustive else "halving",
    )
    rows = sorted((r for r in result["rows"] if r["final"]), key=lambda r: r["time_ms"])
    print_table(
        f"pattern selection (K={k}, ε={args.threshold} points, {args.tasks} validation tasks)",
        [
            "pattern",
            "name",
            "acc %",
            "± CI",
            "Δ vs full",
            "± CI",
            "adapt ms",
            "speed-up",
            "+predict ms",
            "speed-up",
            "MFLOP",
        ],
        [
            [
                r["pattern"],
                r["name"],
                r["accuracy_pct"],
                r["ci95_pct"],
                r["delta_pct"],
                r["delta_ci95_pct"],
                r["time_ms"],
                r["speedup"],
                r["total_ms"],
                r["speedup_total"],
                r["mflops"],
            ]
            for r in rows
        ],
    )
    c, ref = result["choice"], result["reference"]
    console.print(
        f"full adaptation: {ref['accuracy_pct']:.2f}% ± {ref['ci95_pct']:.2f}%, "
        f"adaptation {ref['time_ms']:.2f} ms/task (+ prediction {ref['total_ms']:.2f}); "
        f"threshold {result['threshold_pct']:.2f}%"
    )
    console.print(
        f"choice: {c['pattern']} ({c['name']}) {c['accuracy_pct']:.2f}% ± {c['ci95_pct']:.2f}%: "
        f"adaptation {c['speedup']:.2f}x faster ({c['speedup_total']:.2f}x with prediction)"
    )
    b = result["best"]
    if b:
        verdict = "beats" if b["beats_reference"] else "does not beat"
        console.print(
            f"most accurate other pattern: {b['pattern']} ({b['name']}) {b['accuracy_pct']:.2f}%, "
            f"{verdict} full adaptation by {b['delta_pct']:+.2f} ± {b['delta_ci95_pct']:.2f} "
            f"points (paired, same tasks; {'significant' if b['significant'] else 'not significant'}"
            " at 95%)"
        )
    title = (
        f"Lambda pattern selection: {config.dataset} {config.ways}-way {config.shots}-shot, "
        f"K={k}, ε={args.threshold} points"
    )
    result["plot"] = str(plot_selection(result, args.out / f"selection_K{k}.png", title))
    write_results(args, f"selection_K{k}.json", result, quiet=True)
    _report(args.out)
    return 0


def _report(out: Path) -> None:
    """Rebuilds ``out/report.md`` from every artefact of the run folder."""
    from metagrad.bench.report import console
    from metagrad.fewshot.report import write_report

    console.print(f"report: {write_report(out)}")
