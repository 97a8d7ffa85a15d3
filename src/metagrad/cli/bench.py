"""``metagrad bench``: reproducible benchmarks that print tables and write JSON and PNG files."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from metagrad.autodiff import MODES
from metagrad.bench.scale import MODELS, STRATEGIES
from metagrad.cli.arguments import (
    add_command,
    add_lm_size_arguments,
    add_outputs,
    non_negative_int,
    parse_list,
    parse_positive_ints,
    parse_size,
    positive_int,
    positive_number,
    subcommands,
)

UNROLL_STRATEGIES: tuple[str, ...] = (
    "reverse",
    "remat",
    "mixflow",
    "mixflow+sqrt",
    "mixflow+nested",
    "reversible",
)  # metagrad.bench.unroll.STRATEGIES, repeated so that building the parser imports no JAX


COMMAND_META_GRAD = "metagrad bench meta-grad"


def register(subparsers: Any) -> None:
    """Adds ``bench`` and its sub-commands to the ``metagrad`` parser."""
    bench = subparsers.add_parser("bench", help="run benchmarks (tables, JSON, PNG plots)")
    kinds = subcommands(bench, "benchmark", "BENCHMARK")

    p = add_command(
        kinds,
        "meta-grad",
        run=run_meta_grad,
        help="memory, time and exactness of the meta-gradient in each differentiation mode",
        description="For each case and mode: XLA compiled memory (temp and total), median "
        "wall-clock of the compiled meta-gradient after a warm-up, the max relative error "
        "against a float64 reference (computed on the CPU), and the sensitivity of that "
        "reference to a relative 1e-6 perturbation of the initial parameters (a condition "
        "estimate: an error is only meaningful where the sensitivity is small).",
    )
    p.add_argument("--cases", default="lm,mlp,maml", help="comma-separated: lm, mlp, maml")
    p.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES)
    )
    p.add_argument(
        "--repeats", type=positive_int, default=3, help="timed runs after a warm-up (default 3)"
    )
    add_lm_size_arguments(p)
    p.add_argument(
        "--steps",
        type=positive_int,
        help="inner steps T of every case (default 8 for lm/mlp, 5 for maml)",
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="P=V1,V2,...",
        help="also sweep an LM size (T=inner steps, S=sequence length), compile only, and plot "
        "memory against it; repeatable, e.g. --sweep T=2,4,8,16 --sweep S=128,256,512",
    )
    p.add_argument(
        "--precision",
        default="default",
        choices=PRECISIONS,
        help="matmul precision of the float32 runs (jax.default_matmul_precision): default "
        "(TF32/bf16 passes on GPUs and TPUs), high, or highest (full float32; use it for exact "
        "comparisons on accelerators). The CPU computes float32 in full precision either way.",
    )
    p.add_argument(
        "--reference-mode",
        default="remat",
        choices=("remat", "reverse"),
        help="mode of the float64 reference (default remat: reverse-over-reverse with per-step "
        "checkpoints, which fits in float64 where reverse may not)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test in seconds)")
    add_outputs(p, out_help="directory for artefacts (PNG plots, JSON copy)")

    m = add_command(
        kinds,
        "maml",
        run=run_maml,
        help="time of one second-order MAML meta-iteration (conv4, the fewshot train step)",
        description="Compiled meta-step of `metagrad fewshot train` on random episodes: median "
        "wall-clock after a warm-up, XLA temp memory and FLOPs, per mode (and pattern).",
    )
    m.add_argument(
        "--modes", default="mixflow", help="comma-separated subset of " + ", ".join(MODES)
    )
    m.add_argument("--ways", type=positive_int, default=5)
    m.add_argument("--shots", type=positive_int, default=1)
    m.add_argument("--queries", type=positive_int, default=15)
    m.add_argument("--steps", type=positive_int, default=5, help="inner steps (default 5)")
    m.add_argument("--meta-batch", type=positive_int, default=8)
    m.add_argument("--channels", type=positive_int, default=64)
    m.add_argument("--repeats", type=positive_int, default=3)
    m.add_argument("--patterns", help="comma-separated Lambda patterns (default: full)")
    m.add_argument(
        "--conv-impl",
        default="auto",
        help="convolution: auto (im2col on CPU, lax elsewhere), im2col or lax",
    )
    m.add_argument(
        "--reference-s", type=positive_number, default=1.4, help="PyTorch s/it to compare with"
    )
    add_outputs(m, out_help="directory for artefacts (JSON copy)")

    s = add_command(
        kinds,
        "scale",
        run=run_scale,
        help="step time and per-device memory of the sharded meta-training step on 1..N devices",
        description="MAML meta-training step (metagrad.distributed) with the meta-batch sharded "
        "over devices ('data') or the meta-parameters sharded FSDP-style ('params'): XLA's "
        "compiled memory per device, parameter bytes per device, median wall-clock. Missing "
        "devices are simulated on the CPU in a subprocess (they share its cores: time does not "
        "scale there, memory does).",
    )
    s.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
    s.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="comma-separated subset of " + ", ".join(STRATEGIES),
    )
    s.add_argument("--model", choices=MODELS, default="conv4", help="conv4 (default) or mlp")
    s.add_argument("--channels", type=positive_int, default=64, help="conv4 channels (default 64)")
    s.add_argument("--hidden", type=positive_int, default=256, help="MLP width (default 256)")
    s.add_argument("--ways", type=positive_int, default=5)
    s.add_argument("--shots", type=positive_int, default=1)
    s.add_argument("--queries", type=positive_int, default=15)
    s.add_argument("--steps", type=positive_int, default=5, help="inner steps (default 5)")
    s.add_argument(
        "--meta-batch", type=positive_int, default=8, help="multiple of every device count"
    )
    s.add_argument("--repeats", type=positive_int, default=3)
    s.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    add_outputs(s, out_help="directory for artefacts (JSON copy)")

    u = add_command(
        kinds,
        "unroll",
        run=run_unroll,
        help="long inner loops: memory and time vs T for every strategy, largest T in a budget, "
        "and a check of mode='auto'",
        description="For each case, T and strategy (reverse, remat, mixflow, mixflow+sqrt, "
        "mixflow+nested, and the reversible loop for the MLP case): XLA compiled memory (temp and "
        "total) and the median wall-clock after a warm-up. Strategies above --max-run-memory are "
        "compiled only. Then the largest T within --budget per strategy (compile only), and the "
        "planner's choice against the measured-fastest fitting strategy for several budgets.",
    )
    u.add_argument("--cases", default="lm,mlp", help="comma-separated: lm, mlp")
    u.add_argument(
        "--steps",
        default="8,32,128,512",
        help="comma-separated inner steps T (default 8,32,128,512)",
    )
    u.add_argument(
        "--strategies",
        default=",".join(UNROLL_STRATEGIES),
        help="comma-separated subset of " + ", ".join(UNROLL_STRATEGIES),
    )
    u.add_argument(
        "--repeats", type=positive_int, default=3, help="timed runs after a warm-up (default 3)"
    )
    u.add_argument(
        "--max-run-memory",
        default="8GiB",
        help="only compile (do not run) strategies whose compiled total memory exceeds this "
        "(default 8GiB)",
    )
    u.add_argument(
        "--budget", default="4GiB", help="memory budget of the largest-T search (default 4GiB)"
    )
    u.add_argument(
        "--largest-limit",
        type=non_negative_int,
        default=16384,
        help="largest T the largest-T search tries (default 16384; 0 skips the search)",
    )
    u.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test in seconds)")
    add_outputs(u, out_help="directory for the PNG plot (long_unroll.png)")

    _register_implicit(kinds)


QUICK = {
    "lm": {"batch": 2, "seq": 32, "layers": 1, "width": 32, "steps": 2},
    "mlp": {"sizes": (8, 16, 4), "batch": 8, "steps": 2},
    "maml": {"channels": 8, "steps": 2, "meta_batch": 2, "queries": 2},
}


def _register_implicit(kinds: Any) -> None:
    i = add_command(
        kinds,
        "implicit",
        run=run_implicit,
        help="implicit vs unrolled meta-gradients: memory and time against T, and agreement",
        description="Learned per-pixel L2 strengths of a softmax classifier on the glyph images, "
        "trained by T steps of gradient descent: XLA compiled memory and median wall-clock of "
        "the jitted meta-gradient (float32) for Bilevel(method='implicit') (conjugate "
        "gradient), unrolled mixflow and unrolled mixflow with a sqrt(T) checkpoint schedule; "
        "then the relative difference of the implicit and unrolled meta-gradients in float64 as "
        "the inner problem converges.",
    )
    i.add_argument("--steps", default="10,100,1000", help="inner steps T (default 10,100,1000)")
    i.add_argument(
        "--agreement-steps", default="10,30,100,300,1000", help="T of the float64 agreement"
    )
    i.add_argument("--repeats", type=positive_int, default=3, help="timed runs after a warm-up")
    i.add_argument("--quick", action="store_true", help="T = 2,4 only (a smoke test)")
    add_outputs(i, out_help="directory for the PNG plot and a JSON copy")


def run_implicit(args: argparse.Namespace) -> int:
    """``metagrad bench implicit``."""
    command = "metagrad bench implicit"
    steps = parse_positive_ints(args.steps, "--steps", command, "10,100,1000")
    agreement = parse_positive_ints(
        args.agreement_steps, "--agreement-steps", command, "10,30,100,300,1000"
    )
    if args.repeats < 1:
        raise SystemExit(f"{command}: --repeats must be >= 1; got {args.repeats}.")
    if args.quick:
        steps, agreement = [2, 4], [2, 4]

    from metagrad.bench import implicit
    from metagrad.bench.report import console

    result = implicit.run(steps, implicit.STRATEGIES, agreement, repeats=args.repeats)
    implicit.print_report(result)
    plot = {}
    if args.out:
        plot["plot"] = str(implicit.plot(result, args.out / "implicit.png"))
        console.print(f"wrote {plot['plot']}")
    return _write_benchmark(args, "implicit", "implicit.json", quick=args.quick, **result, **plot)


def _parse_sweep(text: str) -> tuple[str, list[int]]:
    name, _, values = text.partition("=")
    try:
        parsed = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        parsed = []
    if not name or not parsed or any(v <= 0 for v in parsed):
        raise SystemExit(
            f"metagrad bench meta-grad: --sweep expects P=V1,V2,... with positive "
            f"integers, e.g. T=2,4,8,16; got {text!r}."
        )
    from metagrad.bench.meta_grad import SWEEP_NAMES

    if name.strip() not in SWEEP_NAMES:
        raise SystemExit(
            f"metagrad bench meta-grad: --sweep {name.strip()!r} is not a size of the LM case; "
            f"use one of {', '.join(SWEEP_NAMES)} (T: inner steps, S: sequence length, B: batch)."
        )
    return name.strip(), parsed


def run_meta_grad(args: argparse.Namespace) -> int:
    """Runs the meta-gradient benchmark from parsed command-line arguments."""
    import jax

    from metagrad.bench import meta_grad
    from metagrad.bench.plots import plot_memory_sweep
    from metagrad.bench.report import console, print_table

    cases = parse_list(args.cases, meta_grad.CASES, "--cases", COMMAND_META_GRAD)
    modes = parse_list(args.modes, MODES, "--modes", COMMAND_META_GRAD)
    sweeps = [_parse_sweep(s) for s in args.sweep]
    if args.repeats < 1:
        raise SystemExit(f"metagrad bench meta-grad: --repeats must be >= 1; got {args.repeats}.")
    overrides: dict[str, dict[str, Any]] = (
        {c: dict(QUICK[c]) for c in cases} if args.quick else {c: {} for c in cases}
    )
    lm = {
        k: getattr(args, k)
        for k in ("batch", "seq", "layers", "width", "steps")
        if getattr(args, k)
    }
    if "lm" in overrides:
        overrides["lm"].update(lm)
    for case in ("mlp", "maml"):
        if case in overrides and args.steps:
            overrides[case]["steps"] = args.steps

    with _matmul_precision(args.precision):
        rows = meta_grad.run(
            cases, modes, args.repeats, overrides, reference_mode=args.reference_mode
        )
    table = []
    for r in rows:
        ref = next((x for x in rows if x["case"] == r["case"] and x["mode"] == "reverse"), None)
        ratio_mem = r["temp_mib"] / ref["temp_mib"] if ref else float("nan")
        ratio_time = r["median_s"] / ref["median_s"] if ref else float("nan")
        table.append(
            [
                r["case"],
                r["mode"],
                r["temp_mib"],
                r["total_mib"],
                ratio_mem,
                r["median_s"],
                ratio_time,
                r["gflops"],
                r["rel_error_vs_float64"],
                r["sensitivity"],
            ]
        )
    for case in cases:
        console.print(
            f"[bold]{case}[/]: {next(r['description'] for r in rows if r['case'] == case)}"
        )
    print_table(
        f"meta-gradient benchmark ({jax.default_backend()}, matmul precision {args.precision}, "
        f"{args.repeats} timed runs, median; error vs a float64 {args.reference_mode} reference "
        "on the CPU; sensitivity: relative change of that reference under a 1e-6 relative "
        "perturbation of θ₀)",
        [
            "case",
            "mode",
            "temp MiB",
            "total MiB",
            "temp ÷ reverse",
            "median s",
            "time ÷ reverse",
            "GFLOP",
            "error vs float64",
            "sensitivity",
        ],
        table,
    )

    sweep_results = []
    for name, values in sweeps:
        base = overrides.get("lm", {}) if args.quick else lm
        base = {k: v for k, v in base.items() if k != {"T": "steps", "S": "seq"}.get(name, name)}
        srows = meta_grad.sweep(name, values, modes, base)
        growth = {m: meta_grad.per_step_growth(srows, m) for m in modes} if name == "T" else {}
        entry = {"parameter": name, "values": values, "rows": srows, "temp_mib_per_step": growth}
        if args.out:
            entry["plot"] = str(
                plot_memory_sweep(
                    srows,
                    args.out / f"meta_grad_sweep_{name}.png",
                    f"LM meta-gradient memory vs {name} ({jax.default_backend()})",
                )
            )
        print_table(
            f"memory sweep over {name} (compiled, temp MiB)",
            [name, *modes],
            [
                [
                    v,
                    *[
                        next(r["temp_mib"] for r in srows if r["value"] == v and r["mode"] == m)
                        for m in modes
                    ],
                ]
                for v in values
            ],
        )
        if growth:
            per_step = srows[0]["per_step_state_mib"]
            console.print(
                "temp memory added per inner step (MiB/step, least squares): "
                + ", ".join(f"{m} {g:.2f}" for m, g in growth.items())
                + f"; predicted T-term |θ|+|m|+|v|+|g| = {per_step:.2f} MiB/step"
            )
        sweep_results.append(entry)

    return _write_benchmark(
        args, "meta-grad", "meta_grad.json", matmul_precision=args.precision,
        reference_mode=args.reference_mode, repeats=args.repeats, quick=args.quick, results=rows,
        sweeps=sweep_results,
    )  # fmt: skip


def run_maml(args: argparse.Namespace) -> int:
    """Runs the MAML meta-iteration benchmark from parsed command-line arguments."""
    import jax

    from metagrad.bench import maml
    from metagrad.bench.report import console, print_table
    from metagrad.fewshot.patterns import Pattern

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(
            f"metagrad bench maml: --modes takes a comma-separated subset of {', '.join(MODES)}; "
            f"got {args.modes!r}."
        )
    for name in ("ways", "shots", "queries", "steps", "meta_batch", "channels", "repeats"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(
                f"metagrad bench maml: {flag} must be >= 1; got {getattr(args, name)}."
            )
    if args.conv_impl not in ("auto", "im2col", "lax"):
        raise SystemExit(
            f"metagrad bench maml: --conv-impl must be auto, im2col or lax; got {args.conv_impl!r}."
        )
    patterns = [p.strip() for p in args.patterns.split(",")] if args.patterns is not None else None
    for code in patterns or ():
        try:
            pattern = Pattern.parse(code)
        except ValueError as err:
            raise SystemExit(f"metagrad bench maml: --patterns: {err}") from None
        if pattern.steps != args.steps:
            raise SystemExit(
                f"metagrad bench maml: --patterns {code!r} has {pattern.steps} rows but --steps is "
                f"{args.steps}; give one row per inner step."
            )
    rows = maml.run(
        modes,
        ways=args.ways,
        shots=args.shots,
        queries=args.queries,
        steps=args.steps,
        meta_batch=args.meta_batch,
        channels=args.channels,
        repeats=args.repeats,
        patterns=patterns,
        conv_impl=args.conv_impl,
    )
    for r in rows:
        r["ratio_vs_reference"] = r["median_s"] / args.reference_s
    print_table(
        f"MAML meta-iteration, conv4 {args.channels} ch, {args.ways}-way {args.shots}-shot, "
        f"{args.queries} queries, K={args.steps}, meta-batch {args.meta_batch} "
        f"({jax.default_backend()}, median of {args.repeats})",
        [
            "pattern",
            "mode",
            "conv",
            "median s",
            "÷ PyTorch ref",
            "CPU s",
            "cores used",
            "load avg",
            "temp MiB",
            "compile s",
        ],
        [
            [
                r["pattern"],
                r["mode"],
                r["resolved_conv_impl"],
                r["median_s"],
                r["ratio_vs_reference"],
                r["median_cpu_s"],
                r["cores_used"],
                max(r["load_avg"]),
                r["temp_mib"],
                r["compile_s"],
            ]
            for r in rows
        ],
    )
    console.print(
        f"÷ PyTorch ref: median wall-clock / {args.reference_s} s (the reference's figure on a "
        "quiet 2-core machine); 'cores used' = CPU time / wall-clock of the step: below the "
        "machine's core count when other processes share it (see 'load avg')."
    )

    sizes = ("ways", "shots", "queries", "steps", "meta_batch", "channels", "repeats")
    return _write_benchmark(
        args, "maml", "maml.json", reference_s=args.reference_s,
        config={k: getattr(args, k) for k in sizes}, results=rows,
    )  # fmt: skip


def run_scale(args: argparse.Namespace) -> int:
    """Runs the scaling benchmark from parsed command-line arguments."""
    from metagrad.bench import scale
    from metagrad.bench.report import console, print_table

    try:
        devices = [int(d) for d in args.devices.split(",") if d.strip()]
    except ValueError:
        devices = []
    if not devices or any(d < 1 for d in devices):
        raise SystemExit(
            f"metagrad bench scale: --devices takes comma-separated positive ints, e.g. 1,2,4,8; "
            f"got {args.devices!r}."
        )
    strategies = [t.strip() for t in args.strategies.split(",") if t.strip()]
    if not strategies or any(t not in STRATEGIES for t in strategies):
        raise SystemExit(
            f"metagrad bench scale: --strategies takes a comma-separated subset of "
            f"{', '.join(STRATEGIES)}; got {args.strategies!r}."
        )
    for name in ("channels", "hidden", "ways", "shots", "queries", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(
                f"metagrad bench scale: --{name} must be >= 1; got {getattr(args, name)}."
            )
    sizes = {
        "channels": args.channels,
        "hidden": args.hidden,
        "ways": args.ways,
        "shots": args.shots,
        "queries": args.queries,
        "steps": args.steps,
        "meta_batch": args.meta_batch,
        "repeats": args.repeats,
    }
    if args.quick:
        sizes.update(channels=8, hidden=32, queries=2, steps=1, repeats=1)
    if any(args.meta_batch % d for d in devices):
        raise SystemExit(
            f"metagrad bench scale: --meta-batch {args.meta_batch} must be a multiple of every "
            f"device count in --devices {args.devices}; use e.g. --meta-batch "
            f"{scale._lcm(devices)}."
        )
    result = scale.run(devices, strategies, model=args.model, **sizes)
    rows = result["rows"]
    where = (
        f"{result['device_kind']} x{result['device_count']}, simulated on a shared CPU"
        if result["simulated"]
        else f"{result['device_kind']} x{result['device_count']}"
    )
    desc = f"conv4 {sizes['channels']} ch" if args.model == "conv4" else f"MLP {sizes['hidden']}"
    print_table(
        f"sharded MAML meta-step, {desc}, {sizes['ways']}-way {sizes['shots']}-shot, "
        f"K={sizes['steps']}, meta-batch {sizes['meta_batch']} ({where}; memory per device; "
        f"median of {sizes['repeats']})",
        [
            "strategy",
            "devices",
            "mesh",
            "tasks/dev",
            "params MiB/dev",
            "temp MiB/dev",
            "args MiB/dev",
            "total MiB/dev",
            "median s",
            "compile s",
        ],
        [
            [
                r["strategy"],
                r["devices"],
                r["mesh"],
                r["tasks_per_device"],
                r["param_mib_per_device"],
                r["temp_mib"],
                r["argument_mib"],
                r["total_mib"],
                r["median_s"],
                r["compile_s"],
            ]
            for r in rows
        ],
    )
    if result["simulated"]:
        console.print(
            "simulated devices share this machine's CPU cores: step time does not fall with "
            "more devices here; per-device memory is what the sharding changes."
        )
    summary = {k: v for k, v in result.items() if k != "rows"}
    return _write_benchmark(
        args, "scale", "scale.json", model=args.model, quick=args.quick, **summary, results=rows
    )


def run_unroll(args: argparse.Namespace) -> int:
    """Runs the long-unroll benchmark from parsed command-line arguments."""
    command = "metagrad bench unroll"
    cases = parse_list(args.cases, ("lm", "mlp"), "--cases", command)
    strategies = [t.strip() for t in args.strategies.split(",") if t.strip()]
    if not strategies or any(t not in UNROLL_STRATEGIES for t in strategies):
        raise SystemExit(
            f"{command}: --strategies takes a comma-separated subset of "
            f"{', '.join(UNROLL_STRATEGIES)}; got {args.strategies!r}."
        )
    steps = parse_positive_ints(args.steps, "--steps", command, "8,32,128,512")
    if args.repeats < 1:
        raise SystemExit(f"{command}: --repeats must be >= 1; got {args.repeats}.")
    if args.largest_limit < 0:
        raise SystemExit(f"{command}: --largest-limit must be >= 0; got {args.largest_limit}.")
    max_run = parse_size(args.max_run_memory, "--max-run-memory", command)
    budget = parse_size(args.budget, "--budget", command)

    import jax

    from metagrad.bench import unroll
    from metagrad.bench.report import console

    sizes = unroll.QUICK_SIZES if args.quick else unroll.SIZES
    result = unroll.run(
        cases,
        steps,
        strategies,
        {c: sizes[c] for c in cases},
        repeats=args.repeats,
        max_run_bytes=max_run,
        budget=budget,
        largest_limit=args.largest_limit,
    )
    unroll.print_report(result)
    plot = {}
    if args.out:
        title = f"meta-gradient through T inner steps, every strategy ({jax.default_backend()})"
        plot["plot"] = str(unroll.plot(result["measured"], args.out / "long_unroll.png", title))
        console.print(f"wrote {plot['plot']}")
    measured = result.pop("measured")
    return _write_benchmark(
        args, "unroll", None, quick=args.quick, **result, **plot,
        results=[m.as_json() for m in measured],
    )  # fmt: skip


PRECISIONS = ("default", "high", "highest")


def _matmul_precision(precision: str) -> Any:
    """``jax.default_matmul_precision(precision)``, or no change for ``"default"``."""
    import contextlib

    import jax

    if precision == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(precision)


def _write_benchmark(
    args: argparse.Namespace, benchmark: str, filename: str | None, **fields: Any
) -> int:
    """Writes a benchmark's JSON (``OUT/filename`` and ``--json``): where it ran, then ``fields``.

    Returns the command's exit status (0), so that a ``run_*`` ends with ``return
    _write_benchmark(...)``.
    """
    from metagrad.cli.output import write_results

    write_results(args, filename, {**_environment(benchmark), **fields})
    return 0


def _environment(benchmark: str) -> dict[str, Any]:
    """What every benchmark JSON records about where it ran."""
    import os

    import jax

    return {
        "benchmark": benchmark,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
    }
