"""``metagrad plan``: what every differentiation strategy of a built-in case would cost.

Each candidate strategy (mode × trajectory checkpoint schedule, as ``mode="auto"`` considers them,
plus the exactly reversible loop for the MLP case) is compiled and never run. The table shows XLA's
compiled memory, its cost analysis, the planner's time estimate, whether it fits the budget, and
the planner's choice.
"""

from __future__ import annotations

import argparse
from typing import Any

from metagrad.cli.arguments import add_command, add_lm_size_arguments, add_outputs, positive_int

COMMAND = "metagrad plan"


def register(subparsers: Any) -> None:
    """Adds ``plan`` to the ``metagrad`` parser."""
    p = add_command(
        subparsers,
        "plan",
        run=run_plan,
        help="compile every strategy of a built-in case and print its memory, FLOPs and "
        "estimated time (nothing is run)",
        description="Compiles the meta-gradient of a built-in case (the LM or MLP case of "
        "`metagrad bench meta-grad`) for every candidate strategy of mode='auto' (reverse, remat, "
        "mixflow; every step, sqrt and, for T >= 64, two nested levels), plus the exactly "
        "reversible loop for the MLP case, without running it. Prints XLA's compiled memory and "
        "cost analysis, the roofline time estimate, whether it fits --memory-budget, and the "
        "fastest estimate that fits.",
    )
    p.add_argument("--case", default="lm", help="lm (decoder LM, Adam) or mlp (momentum SGD)")
    p.add_argument("--steps", type=positive_int, default=8, help="inner steps T (default 8)")
    add_lm_size_arguments(p, batch_help="batch size (default: lm 4, mlp 256)")
    p.add_argument("--sizes", help="MLP layer widths, input first (default 256,1024,1024,1024,10)")
    p.add_argument(
        "--memory-budget",
        help="bytes the meta-gradient may use, e.g. 4GiB, 512MiB or 1e9 (default: no limit)",
    )
    p.add_argument(
        "--no-reversible", action="store_true", help="leave the reversible loop out (MLP case)"
    )
    p.add_argument(
        "--autotune",
        action="store_true",
        help="also run the fitting candidates whose estimate is within 1.5x of the best and "
        "choose the fastest measured (as mode='auto' with autotune=True)",
    )
    add_outputs(p, json_help="write the table to this JSON file")


def _sizes(args: argparse.Namespace) -> dict[str, Any]:
    """The case builder's keyword overrides from the flags, with errors that name the flag."""
    if args.case not in ("lm", "mlp"):
        raise SystemExit(
            f"{COMMAND}: --case must be lm (decoder LM, Adam) or mlp (MLP, momentum SGD); "
            f"got {args.case!r}."
        )
    for flag in ("steps", "batch", "seq", "layers", "width"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"{COMMAND}: --{flag} must be a positive int; got {value}.")
    lm_only = [f"--{f}" for f in ("seq", "layers", "width") if getattr(args, f) is not None]
    if args.case == "mlp" and lm_only:
        raise SystemExit(
            f"{COMMAND}: {', '.join(lm_only)} apply to --case lm only; for --case mlp use --sizes "
            "and --batch."
        )
    if args.case == "lm" and args.sizes is not None:
        raise SystemExit(
            f"{COMMAND}: --sizes applies to --case mlp only; for --case lm use --batch, --seq, "
            "--layers and --width."
        )
    sizes: dict[str, Any] = {"steps": args.steps}
    if args.batch is not None:
        sizes["batch"] = args.batch
    if args.case == "lm":
        sizes.update({f: getattr(args, f) for f in ("seq", "layers", "width") if getattr(args, f)})
    elif args.sizes is not None:
        try:
            widths = tuple(int(v) for v in args.sizes.split(","))
        except ValueError:
            widths = ()
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise SystemExit(
                f"{COMMAND}: --sizes takes at least two comma-separated positive ints (input "
                f"width, ..., classes), e.g. 256,1024,10; got {args.sizes!r}."
            )
        sizes["sizes"] = widths
    return sizes


def run_plan(args: argparse.Namespace) -> int:
    """Plans a built-in case from parsed command-line arguments."""
    sizes = _sizes(args)
    budget = None
    if args.memory_budget is not None:
        from metagrad.planner import parse_bytes

        try:
            budget = parse_bytes(args.memory_budget)
        except ValueError as err:
            raise SystemExit(f"{COMMAND}: --memory-budget: {err}") from None

    import jax

    from metagrad import planner
    from metagrad.bench import unroll
    from metagrad.bench.report import console, print_table
    from metagrad.files import write_json
    from metagrad.memory import MiB
    from metagrad.progress import progress_bar

    steps = sizes.pop("steps")
    candidates = list(planner.default_candidates(steps))
    if args.case == "mlp" and not args.no_reversible:
        candidates.append(unroll.candidate("reversible", steps))
    descriptions = []
    with progress_bar() as bar:
        task = bar.add_task(f"plan {args.case}, T={steps}", total=len(candidates), status="")

        def build(cand: planner.Candidate) -> tuple[Any, Any]:
            if descriptions:
                bar.advance(task)
            bar.update(task, status=f"compiling {unroll.label(cand)}")
            try:
                built = unroll.build_abstract(args.case, cand, sizes)
            except ValueError as err:  # sizes the model rejects, e.g. --width not a multiple of 8
                raise SystemExit(f"{COMMAND}: {err}") from None
            descriptions.append(built.description)
            return built.fn, built.args

        result = planner.plan(
            build,
            memory_budget=budget,
            candidates=candidates,
            compiler_options=planner.ANALYSIS_COMPILER_OPTIONS,
        )
        bar.advance(task)
        if args.autotune:
            bar.update(task, status="autotune: timing the close candidates")

            def build_concrete(cand: planner.Candidate) -> tuple[Any, Any]:
                built = unroll.build(args.case, cand, sizes)
                return built.fn, built.args

            result = planner.autotune(result, build_concrete)
        bar.update(task, status="done")

    flops_per_s, bytes_per_s = planner.machine_throughput()
    console.print(f"[bold]{args.case}[/]: {descriptions[0]}")
    budget_text = "no limit" if budget is None else f"budget {budget / MiB:,.1f} MiB"
    run_text = "; the close ones timed (--autotune)" if args.autotune else " and not run"
    print_table(
        f"plan: meta-gradient strategies, compiled{run_text} ({jax.default_backend()}, "
        f"{budget_text})",
        [
            "strategy",
            "temp MiB",
            "total MiB",
            "GFLOP",
            "GB accessed",
            "est. ms",
            "measured ms",
            "fits",
            "chosen",
        ],
        [
            [unroll.label(r.candidate), *row[1:]]
            for r, row in zip(result.rows, result.table(), strict=True)
        ],
    )
    console.print(
        "GFLOP and GB accessed: XLA's cost analysis, which counts each loop body once. est. ms: "
        f"T × FLOPs of one step / {flops_per_s / 1e9:.0f} GFLOP/s + 2 × temp bytes / "
        f"{bytes_per_s / 1e9:.1f} GB/s (this machine's matmul and copy throughput): an estimate "
        "that ranks the strategies, not a run time (see metagrad.planner)."
    )
    if result.choice is None:
        console.print(
            f"[red]nothing fits {budget_text}[/]: raise --memory-budget or shrink the case."
        )
    if args.json:
        write_json(
            args.json,
            {
                "command": "plan",
                "backend": jax.default_backend(),
                "case": args.case,
                "steps": steps,
                "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
                "description": descriptions[0],
                "memory_budget": budget,
                "machine_throughput": {"flops_per_s": flops_per_s, "bytes_per_s": bytes_per_s},
                "rows": [
                    {
                        "strategy": unroll.label(r.candidate),
                        "mode": r.candidate.mode,
                        "schedule": unroll.schedule_json(r.candidate.schedule),
                        "temp_bytes": r.temp_bytes,
                        "total_bytes": r.total_bytes,
                        "flops_counted": r.flops,
                        "bytes_accessed_counted": r.bytes_accessed,
                        "estimated_s": r.estimated_s,
                        "measured_s": r.measured_s,
                        "fits": r.fits,
                        "chosen": r is result.choice,
                    }
                    for r in result.rows
                ],
                "choice": None if result.choice is None else unroll.label(result.choice.candidate),
            },
        )
        console.print(f"wrote {args.json}")
    return 0
