"""``metagrad check``: is a built-in meta-gradient exact and well-conditioned, and if not, why.

For each case it compares the float32 meta-gradient of every mode with a float64 reverse-mode
reference (on the CPU), measures the float64 meta-gradient's sensitivity to a relative 1e-6
perturbation of the initial parameters, analyses the inner trajectory (``metagrad.check``) and
gives a verdict, ``sound`` or ``ill-conditioned``, with the causes and what to do.
"""

from __future__ import annotations

import argparse
from typing import Any

from metagrad.cli.arguments import (
    add_command,
    add_lm_size_arguments,
    add_outputs,
    fail,
    non_negative_number,
    parse_list,
    positive_int,
    positive_number,
    require_positive,
)

COMMAND = "metagrad check"
CASES = ("lm", "mlp", "maml", "reweight", "lr")


def register(subparsers: Any) -> None:
    """Adds ``check`` to the ``metagrad`` parser."""
    p = add_command(
        subparsers,
        "check",
        run=run_check,
        help="check a meta-gradient against float64 and for conditioning (verdict + causes)",
        description="Checks the meta-gradient of a built-in case: the float32 value of every "
        "mode against a float64 reverse-mode reference, its sensitivity to a tiny perturbation "
        "of the initial parameters, where it comes from, and a verdict (sound or "
        "ill-conditioned) with the causes. Cases: lm, mlp, maml (the meta-grad benchmark's "
        "cases; maml is checked on its first task), reweight and lr (the first meta-step of "
        "`metagrad meta reweight` / `meta lr` with their defaults). Library users call "
        "metagrad.check(problem, meta, ...) instead.",
    )
    p.add_argument("--case", default="lm", help=f"one of {', '.join(CASES)} (default lm)")
    p.add_argument("--modes", default="reverse,remat,mixflow", help="modes to compare")
    add_lm_size_arguments(p)
    p.add_argument("--steps", type=positive_int, help="lm: inner steps T (default 8)")
    p.add_argument(
        "--eps-root",
        type=non_negative_number,
        help="lm: ε inside Adam's root (default 1e-8; 0 is optax's default, ε outside the root)",
    )
    p.add_argument(
        "--delta", type=positive_number, default=1e-6, help="relative perturbation (1e-6)"
    )
    p.add_argument(
        "--reference-mode",
        default="reverse",
        help="mode of the float64 reference: reverse, or remat to save memory (default reverse)",
    )
    add_outputs(p, json_help="write the report to this JSON file")


def _target(args: argparse.Namespace) -> tuple[Any, str]:
    """``(callable returning a CheckReport given options, description)`` for the case."""
    from metagrad.diagnostics import check, check_meta_gradient

    if args.case in ("lm", "mlp", "maml"):
        from metagrad.bench.meta_grad import build

        overrides = {}
        for flag in ("batch", "seq", "layers", "width", "steps", "eps_root"):
            value = getattr(args, flag)
            if value is None:
                continue
            if args.case != "lm":
                raise fail(COMMAND, f"--{flag.replace('_', '-')} applies to --case lm.")
            if flag != "eps_root":
                require_positive(value, f"--{flag}", COMMAND)
            overrides[flag] = value
        built = build(args.case, "mixflow", **overrides)
        return lambda **o: check(built.problem, **built.check_inputs, **o), built.description

    from metagrad.meta import learning_rates, reweight
    from metagrad.meta.online import as_meta_gradient

    module, config = (
        (reweight, reweight.ReweightConfig())
        if args.case == "reweight"
        else (learning_rates, learning_rates.LRConfig())
    )
    data = module.prepare_data(config)
    inputs = module.first_window_inputs(config, data)
    build = module.meta_gradient_builder(config)

    def make(mode: str) -> Any:
        return as_meta_gradient(build(mode, config.steps)[0])

    description = f"first meta-step of `metagrad meta {args.case}` (defaults, T={config.steps})"
    return lambda **o: check_meta_gradient(make, inputs, perturb=1, **o), description


def run_check(args: argparse.Namespace) -> int:
    """Runs the check and prints the report; returns 0 when sound, 1 when ill-conditioned (so
    that a script can stop before trusting the meta-gradient)."""
    from metagrad.autodiff import MODES
    from metagrad.cli.output import write_results

    if args.case not in CASES:
        raise fail(COMMAND, f"--case must be one of {', '.join(CASES)}; got {args.case!r}.")
    modes = tuple(parse_list(args.modes, MODES, "--modes", COMMAND))
    if args.reference_mode not in ("reverse", "remat"):
        raise fail(
            COMMAND,
            "--reference-mode must be reverse or remat (plain reverse-over-reverse); got "
            f"{args.reference_mode!r}.",
        )
    if not 0 < args.delta < 1e-2:
        raise fail(COMMAND, f"--delta must be in (0, 0.01), e.g. 1e-6; got {args.delta}.")
    if args.eps_root is not None and not args.eps_root >= 0:
        raise fail(COMMAND, f"--eps-root must be >= 0; got {args.eps_root}.")
    run, description = _target(args)
    print(f"{COMMAND} --case {args.case}: {description}")
    report = run(modes=modes, delta=args.delta, reference_mode=args.reference_mode)
    print(report.summary())
    write_results(args, None, {"case": args.case, "description": description, **report.to_json()})
    return 0 if report.verdict == "sound" else 1
