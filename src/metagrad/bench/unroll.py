"""Long inner loops: memory and time of every strategy against T, largest T in a budget, and a check
of ``mode="auto"``'s choices against measured times.

Strategies (a differentiation mode and a trajectory checkpoint schedule, see ``metagrad.unroll``):

* ``reverse``, ``remat``, ``mixflow``: every step's state is kept (T states).
* ``mixflow+sqrt``: mixed mode, a checkpoint every ~√T steps (Chen et al. 2016).
* ``mixflow+nested``: mixed mode, two nested levels of segments, ``planner.nested_schedule(T)``
  (``(64, 8)`` at T=512), a two-level instance of multi-level checkpointing (Griewank & Walther
  2000).
* ``reversible`` (MLP case only: its inner loop is momentum SGD): the exactly reversible loop of
  Maclaurin et al. (2015), which keeps no trajectory at all.

Cases are those of ``metagrad.bench.meta_grad`` (``build_lm``, ``build_mlp``) at sizes that let the
whole default sweep (T ∈ {8, 32, 128, 512}) run in about 20 minutes on a 2-core CPU.

References:
    Griewank & Walther, *Algorithm 799: Revolve*, ACM TOMS 26(1), 2000.
    Chen, Xu, Zhang, Guestrin, *Training Deep Nets with Sublinear Memory Cost*, arXiv:1604.06174.
    Maclaurin, Duvenaud, Adams, *Gradient-based Hyperparameter Optimization through Reversible
    Learning*, ICML 2015.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from metagrad import planner
from metagrad.bench import meta_grad
from metagrad.files import save_figure
from metagrad.memory import MiB, cost_of_compiled
from metagrad.reversible import DEFAULT_MAX_BUFFER_LIMBS, buffer_limbs

CASES: tuple[str, ...] = ("lm", "mlp")
STEPS: tuple[int, ...] = (8, 32, 128, 512)
STRATEGIES: tuple[str, ...] = (
    "reverse",
    "remat",
    "mixflow",
    "mixflow+sqrt",
    "mixflow+nested",
    meta_grad.REVERSIBLE,
)
SIZES: dict[str, dict[str, Any]] = {
    # Small enough that T=512 takes seconds per run on 2 cores, large enough that the stored
    # trajectory (not one step's working set) dominates the memory at long T.
    "lm": {"batch": 2, "seq": 128, "layers": 2, "width": 64},
    "mlp": {"sizes": (128, 512, 512, 10), "batch": 64},
}
QUICK_SIZES: dict[str, dict[str, Any]] = {
    "lm": {"batch": 1, "seq": 8, "layers": 1, "width": 8},
    "mlp": {"sizes": (8, 16, 4), "batch": 4},
}
TIE = 0.10
"""Relative time difference treated as a tie (timing noise) when judging the planner's choice."""


def candidate(strategy: str, steps: int) -> planner.Candidate:
    """The planner candidate of a named strategy at ``steps`` inner steps."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}.")
    mode, _, schedule = strategy.partition("+")
    if schedule == "nested":
        return planner.Candidate(mode, planner.nested_schedule(steps), steps)
    return planner.Candidate(mode, schedule or None, steps)


def applies(case: str, strategy: str) -> bool:
    """Whether ``strategy`` exists for ``case`` (the reversible loop is momentum SGD: MLP only)."""
    return strategy != meta_grad.REVERSIBLE or case == "mlp"


def build(case: str, cand: planner.Candidate, sizes: dict[str, Any]) -> meta_grad.Built:
    """The case's meta-gradient for one candidate, with concrete arguments (to run it)."""
    return meta_grad.build(case, cand.mode, schedule=cand.schedule, steps=cand.steps, **sizes)


def build_abstract(case: str, cand: planner.Candidate, sizes: dict[str, Any]) -> meta_grad.Built:
    """Like ``build``, but the arguments are ``jax.ShapeDtypeStruct``s: for compile-only uses.

    The builder runs under ``jax.eval_shape``, so no parameters or data are materialised (the
    data of a long loop, T batches, can be large).
    """
    built: list[meta_grad.Built] = []

    def make_args() -> tuple[Any, ...]:
        built.append(build(case, cand, sizes))
        return built[0].args

    specs = jax.eval_shape(make_args)
    return dataclasses.replace(built[0], args=specs)


def label(cand: planner.Candidate) -> str:
    """A short name: ``mixflow``, ``mixflow+sqrt``, ``mixflow+(64, 8)``, ``reversible``..."""
    return cand.mode if cand.schedule is None else f"{cand.mode}+{cand.schedule}"


def schedule_json(schedule: Any) -> Any:
    """The schedule as JSON (tuples become lists)."""
    return list(schedule) if isinstance(schedule, tuple) else schedule


@dataclasses.dataclass
class Measured:
    """One (case, T, strategy): its plan row (analyses) and, if it was run, its times."""

    case: str
    strategy: str
    row: planner.PlanRow
    compile_s: float
    times_s: list[float] | None
    description: str
    param_count: int

    @property
    def median_s(self) -> float | None:
        return None if self.times_s is None else statistics.median(self.times_s)

    def as_json(self) -> dict[str, Any]:
        c = self.row.candidate
        out = {
            "case": self.case,
            "steps": c.steps,
            "strategy": self.strategy,
            "mode": c.mode,
            "schedule": schedule_json(c.schedule),
            "loop_copies": planner.loop_copies(c.schedule, c.steps)
            if c.mode != "reversible"
            else 1,
            "temp_mib": self.row.temp_bytes / MiB,
            "total_mib": self.row.total_bytes / MiB,
            "gflops_counted": self.row.flops / 1e9,
            "gb_accessed_counted": self.row.bytes_accessed / 1e9,
            "estimated_s": self.row.estimated_s,
            "compile_s": self.compile_s,
            "ran": self.times_s is not None,
            "times_s": self.times_s,
            "median_s": self.median_s,
            "description": self.description,
        }
        if c.mode == meta_grad.REVERSIBLE:
            # The only state of the reversible loop that grows with T: uint32 limbs per parameter.
            limbs = buffer_limbs(c.steps, meta_grad.MOMENTUM)
            out["buffer_mib"] = 4 * limbs * self.param_count / MiB
        return out


def sweep(
    cases: Sequence[str],
    steps: Sequence[int],
    strategies: Sequence[str],
    sizes: dict[str, dict[str, Any]],
    *,
    repeats: int,
    max_run_bytes: int,
    on_progress: Callable[[str], None] = lambda _: None,
) -> list[Measured]:
    """Compiles every (case, T, strategy) and times those whose total memory ≤ ``max_run_bytes``.

    The strategies of one (case, T) are timed in interleaved rounds (one run of each per round,
    after a warm-up run of each), so that a change in the machine's load during the measurement
    affects them alike: the auto check compares their times with each other.

    Args:
      cases: from ``CASES``.
      steps: inner-loop lengths T.
      strategies: from ``STRATEGIES`` (those that do not apply to a case are skipped).
      sizes: per-case keyword overrides of the ``meta_grad`` builders.
      repeats: timed rounds (the median is reported).
      max_run_bytes: strategies whose compiled total memory is larger are only compiled.
      on_progress: called with a status line before each compilation and each timing.

    Returns:
      One ``Measured`` per (case, T, strategy).
    """
    out = []
    for case in cases:
        for t in steps:
            group, runs = [], []
            for strategy in (s for s in strategies if applies(case, s)):
                cand = candidate(strategy, t)
                on_progress(f"{case} T={t} {strategy}: compiling")
                built = build(case, cand, sizes[case])
                start = time.perf_counter()
                compiled = built.fn.lower(*built.args).compile()
                compile_s = time.perf_counter() - start
                row = planner.evaluate(cand, compiled)
                count = sum(x.size for x in jax.tree.leaves(built.args[1]))  # args: meta, params
                group.append(
                    Measured(case, strategy, row, compile_s, None, built.description, count)
                )
                runs.append((compiled, built.args) if row.total_bytes <= max_run_bytes else None)
            # The scheduled candidates' estimates use the every-step ones (planner.estimate_times).
            for m, row in zip(group, planner.estimate_times([m.row for m in group]), strict=True):
                m.row = row
            on_progress(f"{case} T={t}: timing {sum(r is not None for r in runs)} strategies")
            for m, run in zip(group, runs, strict=True):
                if run is not None:
                    jax.block_until_ready(run[0](*run[1]))  # warm-up
                    m.times_s = []
            for _ in range(max(1, repeats)):
                for m, run in zip(group, runs, strict=True):
                    if run is not None:
                        start = time.perf_counter()
                        jax.block_until_ready(run[0](*run[1]))
                        m.times_s.append(time.perf_counter() - start)
            out.extend(group)
            del runs
    return out


def largest_steps(
    case: str,
    strategy: str,
    sizes: dict[str, Any],
    budget: int,
    *,
    known: dict[int, int],
    limit: int,
    on_progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The largest T whose compiled meta-gradient fits ``budget`` (compile only).

    Uses ``planner.largest_fitting_steps`` (doubling, then bisection), starting from the largest T
    in ``known`` that fits.

    Args:
      case, strategy, sizes: what to compile.
      budget: bytes.
      known: total bytes already measured, by T (saves compilations).
      limit: the largest T searched.
      on_progress: called with a status line before each compilation.

    Returns:
      ``{"largest_steps", "limit", "limited_by", "compilations", "search_s"}``. ``limited_by`` is
      ``"memory"``, ``"search limit"`` (even ``limit`` fits) or ``"information buffer"`` (the
      reversible loop refuses a T whose buffer exceeds its default ``max_buffer_limbs``, and that
      T still fits the budget).
    """
    totals = dict(known)
    compilations = 0
    start_s = time.perf_counter()
    cap = limit
    if strategy == meta_grad.REVERSIBLE:
        # The reversible loop refuses a T whose information buffer exceeds its default size.
        cap = min(limit, reversible_max_steps())

    def total_at(t: int) -> int:
        nonlocal compilations
        if t not in totals:
            on_progress(f"{case} {strategy}: largest T, compiling T={t}")
            built = build_abstract(case, candidate(strategy, t), sizes)
            compiled = built.fn.lower(*built.args).compile(planner.ANALYSIS_COMPILER_OPTIONS)
            totals[t] = cost_of_compiled(compiled).total_bytes
            compilations += 1
        return totals[t]

    start = max((t for t, b in known.items() if b <= budget and t <= cap), default=1)
    if cap < limit:
        # Memory grows with T, so if the buffer's largest T fits, it is the answer: one compilation
        # (the reversible program at thousands of steps takes a minute to compile).
        start = cap
    largest = planner.largest_fitting_steps(total_at, budget, limit=cap, start=start)
    if largest < cap:
        limited_by = "memory"
    elif cap < limit:
        limited_by = "information buffer"
    else:
        limited_by = "search limit"
    return {
        "case": case,
        "strategy": strategy,
        "budget_mib": budget / MiB,
        "largest_steps": largest,
        "limit": limit,
        "limited_by": limited_by,
        "compilations": compilations,
        "search_s": time.perf_counter() - start_s,
    }


def reversible_max_steps() -> int:
    """The largest T that ``reversible_momentum_sgd`` accepts at the MLP case's decay with its
    default ``max_buffer_limbs`` (beyond it, the information buffer would need more limbs)."""
    lo, hi = 1, 1 << 20
    while hi - lo > 1:  # buffer_limbs grows with T
        mid = (lo + hi) // 2
        if buffer_limbs(mid, meta_grad.MOMENTUM) <= DEFAULT_MAX_BUFFER_LIMBS:
            lo = mid
        else:
            hi = mid
    return lo


def validate_auto(
    measured: Sequence[Measured], max_run_bytes: int, budgets: int = 3
) -> list[dict[str, Any]]:
    """Compares the planner's choice with the measured-fastest fitting strategy.

    For each (case, T), the candidates are the ``unroll`` strategies that were run (the reversible
    loop is not an ``unroll`` mode, so ``mode="auto"`` cannot pick it). The budgets walk down the
    planner's choices: the first is ``max_run_bytes``; each next one is just below the total
    memory of the previous choice, so that a different strategy becomes the cheapest that fits.

    Args:
      measured: the sweep's results.
      max_run_bytes: the first budget (every strategy that fits it was run).
      budgets: how many budgets per (case, T) at most.

    Returns:
      One dict per (case, T, budget) with the choice, the fastest fitting strategy, their times,
      their ratio, and ``verdict``: ``"fastest"``, ``"tie"`` (within ``TIE``) or ``"slower"``.
    """
    out = []
    keys = sorted({(m.case, m.row.candidate.steps) for m in measured}, key=lambda k: k)
    for case, t in keys:
        pool = _timed_unroll_strategies(measured, case, t)
        budget = max_run_bytes
        for _ in range(budgets):
            choice_row = planner.choose([m.row for m in pool], budget)
            if choice_row is None:
                break
            fitting = [m for m in pool if m.row.total_bytes <= budget]
            choice = next(m for m in pool if m.row is choice_row)
            judged = _judge(choice, fitting)
            out.append(
                {
                    "case": case,
                    "steps": t,
                    "budget_mib": budget / MiB,
                    "fitting": [m.strategy for m in fitting],
                    "choice": choice.strategy,
                    "choice_total_mib": choice.row.total_bytes / MiB,
                    "choice_estimated_s": choice.row.estimated_s,
                    **judged,
                }
            )
            budget = (choice.row.total_bytes - 1) // 1024 * 1024  # just below the choice
            if budget <= 0:
                break
    return out


def _timed_unroll_strategies(measured: Sequence[Measured], case: str, t: int) -> list[Measured]:
    """The ``unroll`` strategies of (case, T) that the sweep ran (``mode="auto"``'s pool)."""
    return [
        m
        for m in measured
        if m.case == case
        and m.row.candidate.steps == t
        and m.strategy != meta_grad.REVERSIBLE
        and m.times_s is not None
    ]


def _judge(choice: Measured, fitting: Sequence[Measured]) -> dict[str, Any]:
    """The choice's sweep time against the fastest fitting strategy's, and the verdict."""
    fastest = min(fitting, key=lambda m: m.median_s or 0.0)
    ratio = (choice.median_s or 0.0) / (fastest.median_s or 1.0)
    verdict = "fastest" if choice is fastest else ("tie" if ratio <= 1 + TIE else "slower")
    return {
        "choice_s": choice.median_s,
        "fastest": fastest.strategy,
        "fastest_s": fastest.median_s,
        "ratio": ratio,
        "verdict": verdict,
    }


def validate_autotune(
    measured: Sequence[Measured],
    validation: Sequence[dict[str, Any]],
    sizes: dict[str, dict[str, Any]],
    *,
    repeats: int = 3,
    on_progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """The same check as ``validate_auto`` for ``mode="auto", autotune=True``.

    For each (case, T, budget) of ``validation``, ``planner.autotune`` times the close fitting
    candidates itself (fresh runs, independent of the sweep's) and picks the fastest it measured.
    Its choice is then judged on the sweep's times, like the analysis-only choice.

    Args:
      measured: the sweep's results.
      validation: ``validate_auto``'s rows (their budgets are reused).
      sizes: per-case keyword overrides of the builders, as for ``sweep``.
      repeats: autotune's timed rounds.
      on_progress: called with a status line before each autotuning.

    Returns:
      One dict per row of ``validation``: the autotuned choice, which candidates it timed and
      their autotune times, the sweep's time of the choice, the fastest fitting strategy and the
      verdict (as in ``validate_auto``).
    """
    out = []
    for v in validation:
        case, t, budget = v["case"], v["steps"], int(round(v["budget_mib"] * MiB))
        pool = _timed_unroll_strategies(measured, case, t)
        rows = [dataclasses.replace(m.row, fits=m.row.total_bytes <= budget) for m in pool]
        plan = planner.Plan(tuple(rows), planner.choose(rows, budget), budget)
        on_progress(f"{case} T={t}: autotune within {budget / MiB:,.1f} MiB")

        def build_candidate(cand: planner.Candidate, case: str = case) -> tuple[Any, Any]:
            built = build(case, cand, sizes[case])
            return built.fn, built.args

        tuned = planner.autotune(plan, build_candidate, repeats=repeats)
        by_candidate = {m.row.candidate: m for m in pool}
        choice = by_candidate[tuned.choice.candidate]
        judged = _judge(choice, [m for m, r in zip(pool, rows, strict=True) if r.fits])
        out.append(
            {
                "case": case,
                "steps": t,
                "budget_mib": v["budget_mib"],
                "timed": {
                    by_candidate[r.candidate].strategy: r.measured_s
                    for r in tuned.rows
                    if r.measured_s is not None
                },
                "choice": choice.strategy,
                **judged,
            }
        )
    return out


def acceptance(measured: Sequence[Measured]) -> dict[str, Any]:
    """Issue 7's MLP criteria at the largest T measured: the schedules' temp memory and time
    against mixflow's, and the reversible loop's temp memory across T."""
    mlp = [m for m in measured if m.case == "mlp"]
    if not mlp:
        return {}
    t_max = max(m.row.candidate.steps for m in mlp)
    at = {m.strategy: m for m in mlp if m.row.candidate.steps == t_max}
    out: dict[str, Any] = {"steps": t_max, "schedules": []}
    base = at.get("mixflow")
    for strategy in ("mixflow+sqrt", "mixflow+nested"):
        m = at.get(strategy)
        if base is None or m is None:
            continue
        mem = m.row.temp_bytes / base.row.temp_bytes
        tim = (m.median_s / base.median_s) if m.median_s and base.median_s else float("nan")
        out["schedules"].append(
            {
                "strategy": strategy,
                "schedule": schedule_json(m.row.candidate.schedule),
                "temp_ratio_vs_mixflow": mem,
                "time_ratio_vs_mixflow": tim,
                "meets": bool(mem <= 0.1 and tim <= 2.0),
            }
        )
    out["best_schedule_meets"] = any(s["meets"] for s in out["schedules"])
    rev = sorted(
        (m.row.candidate.steps, m.row.temp_bytes / MiB)
        for m in mlp
        if m.strategy == meta_grad.REVERSIBLE
    )
    if rev:
        temps = [v for _, v in rev]
        out["reversible_temp_mib"] = dict(rev)
        out["reversible_temp_growth"] = max(temps) / min(temps)
        mix = sorted(
            (m.row.candidate.steps, m.row.temp_bytes / MiB) for m in mlp if m.strategy == "mixflow"
        )
        if len(mix) >= 2:
            out["mixflow_temp_growth"] = mix[-1][1] / mix[0][1]
    return out


def per_step_slope(measured: Sequence[Measured], case: str, strategy: str) -> float:
    """Least-squares slope of temp memory (MiB) against T for one case and strategy."""
    points = [
        (m.row.candidate.steps, m.row.temp_bytes / MiB)
        for m in measured
        if m.case == case and m.strategy == strategy
    ]
    if len(points) < 2:
        return float("nan")
    t, mem = np.array(points, dtype=float).T
    return float(np.polyfit(t, mem, 1)[0])


STYLE = {
    "reverse": {"color": "#d62728", "marker": "o"},
    "remat": {"color": "#ff7f0e", "marker": "s"},
    "mixflow": {"color": "#2ca02c", "marker": "^"},
    "mixflow+sqrt": {"color": "#1f77b4", "marker": "v"},
    "mixflow+nested": {"color": "#9467bd", "marker": "D"},
    meta_grad.REVERSIBLE: {"color": "#000000", "marker": "*"},
}


def plot(measured: Sequence[Measured], path: Any, title: str) -> Any:
    """Two panels per case: temp memory against T and median time against T (log-log), one line
    per strategy. Strategies that were not run (too much memory) have no time points.

    Returns:
      ``path`` as a ``pathlib.Path``.
    """

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(m.case for m in measured))
    fig, axes = plt.subplots(len(cases), 2, figsize=(10, 3.8 * len(cases)), squeeze=False)
    for (ax_mem, ax_time), case in zip(axes, cases, strict=True):
        for strategy in STRATEGIES:
            rows = sorted(
                (m.row.candidate.steps, m.row.temp_bytes / MiB, m.median_s)
                for m in measured
                if m.case == case and m.strategy == strategy
            )
            if not rows:
                continue
            style = {**STYLE[strategy], "label": strategy}
            ax_mem.plot([r[0] for r in rows], [r[1] for r in rows], **style)
            timed = [(t, s) for t, _, s in rows if s is not None]
            if timed:
                ax_time.plot(*zip(*timed, strict=True), **style)
        description = next(m.description for m in measured if m.case == case)
        for ax, ylabel in ((ax_mem, "XLA temp memory (MiB)"), (ax_time, "median time (s)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("inner steps T")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{case}: {description.split(', T=')[0]}", fontsize=8)
        ax_mem.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def run(
    cases: Sequence[str],
    steps: Sequence[int],
    strategies: Sequence[str],
    sizes: dict[str, dict[str, Any]],
    *,
    repeats: int = 3,
    max_run_bytes: int = 8 * 2**30,
    budget: int = 4 * 2**30,
    largest_limit: int = 16384,
) -> dict[str, Any]:
    """The whole benchmark: the sweep, the largest T within ``budget``, the auto check, issue 7's
    MLP criteria.

    Args:
      cases, steps, strategies, sizes, repeats, max_run_bytes: as for ``sweep``.
      budget: bytes, for the largest-T search.
      largest_limit: largest T searched (0: no search).

    Returns:
      A JSON-ready dict, except ``"measured"``: the ``Measured`` objects (``as_json`` each).
    """
    from metagrad.bench.report import console
    from metagrad.progress import progress_bar

    with progress_bar() as bar:
        n = sum(applies(c, s) for c in cases for s in strategies) * len(steps)
        task = bar.add_task("long-unroll sweep", total=n, status="")

        def status(text: str) -> None:
            bar.update(task, status=text)
            if not console.is_terminal:  # a log file: one line per step, with the time
                console.print(f"[{time.strftime('%H:%M:%S')}] {text}", highlight=False)

        def step_done(text: str) -> None:
            status(text)
            if text.endswith("compiling") and "largest" not in text:
                bar.advance(task)

        measured = sweep(
            cases,
            steps,
            strategies,
            sizes,
            repeats=repeats,
            max_run_bytes=max_run_bytes,
            on_progress=step_done,
        )
        largest = []
        if largest_limit:
            for case in cases:
                for strategy in strategies:
                    if not applies(case, strategy):
                        continue
                    known = {
                        m.row.candidate.steps: m.row.total_bytes
                        for m in measured
                        if m.case == case and m.strategy == strategy
                    }
                    largest.append(
                        largest_steps(
                            case,
                            strategy,
                            sizes[case],
                            budget,
                            known=known,
                            limit=largest_limit,
                            on_progress=status,
                        )
                    )
        validation = validate_auto(measured, max_run_bytes)
        autotuned = validate_autotune(measured, validation, sizes, on_progress=status)
        status("done")
    return {
        "config": {
            "cases": list(cases),
            "steps": list(steps),
            "strategies": list(strategies),
            "sizes": {c: {k: schedule_json(v) for k, v in sizes[c].items()} for c in cases},
            "repeats": repeats,
            "max_run_mib": max_run_bytes / MiB,
            "budget_mib": budget / MiB,
            "largest_limit": largest_limit,
            "tie_rule": f"times within {TIE:.0%} of the fastest count as ties (timing noise)",
        },
        "machine_throughput": dict(
            zip(("flops_per_s", "bytes_per_s"), planner.machine_throughput(), strict=True)
        ),
        "measured": measured,
        "temp_mib_per_step": {
            c: {s: per_step_slope(measured, c, s) for s in strategies if applies(c, s)}
            for c in cases
        },
        "largest": largest,
        "validation": validation,
        "validation_autotune": autotuned,
        "acceptance": acceptance(measured),
    }


def print_report(result: dict[str, Any]) -> None:
    """Prints the sweep, largest-T, auto-check and acceptance tables of ``run``'s result."""
    from metagrad.bench.report import console, print_table

    measured = result["measured"]
    for case in result["config"]["cases"]:
        console.print(f"[bold]{case}[/]: {next(m.description for m in measured if m.case == case)}")
    print_table(
        "meta-gradient through T inner steps (XLA compiled memory; median wall-clock after a "
        f"warm-up, {result['config']['repeats']} runs; '-': not run, total above "
        f"{result['config']['max_run_mib']:.0f} MiB)",
        ["case", "T", "strategy", "schedule", "temp MiB", "total MiB", "est. s", "median s"],
        [
            [
                m.case,
                m.row.candidate.steps,
                m.strategy,
                str(m.row.candidate.schedule or "-"),
                m.row.temp_bytes / MiB,
                m.row.total_bytes / MiB,
                m.row.estimated_s,
                float("nan") if m.median_s is None else m.median_s,
            ]
            for m in measured
        ],
    )
    if result["largest"]:
        print_table(
            f"largest T whose meta-gradient fits {result['config']['budget_mib']:.0f} MiB "
            "(compiled total memory; compile only)",
            ["case", "strategy", "largest T", "limited by", "compilations"],
            [
                [
                    r["case"],
                    r["strategy"],
                    f"≥ {r['largest_steps']}"
                    if r["limited_by"] == "search limit"
                    else str(r["largest_steps"]),
                    r["limited_by"],
                    r["compilations"],
                ]
                for r in result["largest"]
            ],
        )
    _print_auto_check(
        "mode='auto' check: the planner's choice vs the measured-fastest strategy that fits "
        f"({result['config']['tie_rule']})",
        result["validation"],
        "fitting",
        lambda r: len(r["fitting"]),
    )
    if result.get("validation_autotune"):
        _print_auto_check(
            "mode='auto', autotune=True: the close candidates timed by the planner itself, its "
            "choice judged on the sweep's times",
            result["validation_autotune"],
            "timed (autotune s)",
            lambda r: ", ".join(f"{k} {v:.3g}" for k, v in r["timed"].items()) or "-",
        )
    acc = result["acceptance"]
    if acc.get("schedules"):
        for s in acc["schedules"]:
            console.print(
                f"MLP, T={acc['steps']}: {s['strategy']} {s['schedule']}: temp "
                f"{s['temp_ratio_vs_mixflow']:.3f}× mixflow's, time "
                f"{s['time_ratio_vs_mixflow']:.2f}× (criterion ≤ 0.1× memory at ≤ 2× time: "
                f"{'met' if s['meets'] else 'NOT met'})"
            )
    if "reversible_temp_mib" in acc:
        temps = ", ".join(f"T={t}: {v:.1f}" for t, v in acc["reversible_temp_mib"].items())
        console.print(
            f"reversible temp MiB: {temps} (max/min {acc['reversible_temp_growth']:.2f}; mixflow "
            f"grows {acc.get('mixflow_temp_growth', float('nan')):.1f}× over the same T)"
        )


def _print_auto_check(
    title: str, rows: Sequence[dict[str, Any]], detail: str, cell: Callable[[dict], Any]
) -> None:
    """One table of ``validate_auto`` / ``validate_autotune`` rows; ``detail`` is the fourth
    column's header and ``cell`` its value."""
    from metagrad.bench.report import print_table

    keys = ("choice", "choice_s", "fastest", "fastest_s", "ratio", "verdict")
    print_table(
        title,
        [
            "case",
            "T",
            "budget MiB",
            detail,
            "choice",
            "choice s",
            "fastest fitting",
            "fastest s",
            "ratio",
            "verdict",
        ],  # fmt: skip
        [[r["case"], r["steps"], r["budget_mib"], cell(r), *(r[k] for k in keys)] for r in rows],
    )
