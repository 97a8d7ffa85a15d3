"""Choosing a differentiation strategy from a memory budget, from XLA's own analyses.

A *strategy* is a differentiation mode plus a trajectory checkpoint schedule. The planner compiles
the meta-gradient of each candidate without running it, reads the compiled memory
(``memory_analysis``) and cost (``cost_analysis``: FLOPs and bytes accessed), and estimates the
time with a roofline (below) from the machine's FLOP/s F and bytes/s B, measured once per process
with two micro-benchmarks. It then picks the fastest candidate that fits the budget.

The estimate needs care, because XLA's cost analysis counts the body of a loop once, whatever its
trip count. When a candidate knows its number of steps T (``Candidate.steps``, set by
``default_candidates``), the planner estimates the whole loop as the sum of two terms
(``estimate_times``):

* **Compute**: T × FLOPs of one trajectory step / F. For a candidate that keeps every step, XLA's
  count is one step (one loop body). A schedule with L levels recomputes each step's forward pass
  L more times, so its step costs the same mode's every-step FLOPs + L × one step's forward. The
  forward's FLOPs are read off two other candidates: ``remat`` is ``reverse`` plus one
  recomputation of each step's forward, so forward = FLOPs(remat) − FLOPs(reverse). (The FLOPs of
  the scheduled program itself are not used: a schedule whose segment length does not divide T
  has a separate tail loop, counted once more, and XLA may merge the tail's recomputation with its
  forward pass. If the every-step candidates are not in the plan, the scheduled program's FLOPs
  divided by its number of step loops, ``loop_copies``, are used instead.)
* **Memory traffic**: 2 × the compiled temp memory / B. What a strategy stores along the
  trajectory is written once in the forward pass and read once in the backward pass, and for
  long loops it is far too large for the caches. This term is what makes reverse-over-reverse
  slow (it stores every step's activations) although it does the fewest FLOPs. ``remat`` runs
  the same reverse-over-reverse pass one step at a time: it produces and consumes the same
  per-step residuals as ``reverse``, only it does not keep them, so its traffic is taken as
  ``reverse``'s when that row is in the plan (whether one step's residuals fit in a cache or not;
  in the LM benchmark they are 20 MiB per step, and ``remat`` is 1.3–1.4× slower than ``mixflow``
  for 5 % more FLOPs). XLA's own "bytes accessed" is not used for this term: it counts every
  operand access of every kernel (mostly cache hits on a CPU), counts a loop body once, and
  includes the once-per-program initialisation of the T-sized stacks of stored values, so it
  cannot be scaled by T.

The terms are added rather than maximised as in a roofline: the stores and loads of the
trajectory sit on the loop's critical path (on a 2-core CPU, the maximum let reverse mode look as
fast as mixed mode at T=128, where it is 1.6–1.7× slower). The estimate ranks strategies; it is
not a precise run time (the measured times in ``docs/long_unroll.md`` are 0.5–1.7× the estimates).
The work outside the loop (the outer loss) is small next to T steps and the same for every
candidate.
Without T, the estimate is the roofline of XLA's raw figures, ``max(flops / F, bytes accessed /
B)``, comparable only between candidates with the same loop structure.

**Autotuning close calls.** Two strategies whose estimates are close can rank either way on a
real machine: in the MLP benchmark, ``remat`` stores a 1.3 GiB trajectory and still runs 3–12 %
faster than ``mixflow`` with √T checkpoints, whose estimate is lower. No single pair of
throughputs (F, B) ranks both the LM and the MLP cases right. ``autotune`` therefore runs the
fitting candidates whose estimates lie within ``AUTOTUNE_WITHIN`` of the best and keeps the
fastest measured (``unroll(mode="auto", autotune=True)``, ``metagrad plan --autotune``): the
analyses prune the candidates that cannot win or do not fit, a few runs settle the rest.

References:
    Griewank & Walther, *Algorithm 799: Revolve*, ACM TOMS 26(1), 2000 (multi-level checkpointing).
    Chen, Xu, Zhang, Guestrin, *Training Deep Nets with Sublinear Memory Cost*, arXiv:1604.06174,
    2016 (√T checkpoints).
    Williams, Waterman, Patterson, *Roofline*, CACM 52(4), 2009.
    Tillet, Kung, Cox, *Triton*, MAPL 2019 (choosing among compiled variants by timing them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from metagrad.autodiff import MODES
from metagrad.memory import cost_of_compiled
from metagrad.schedules import Schedule, segment_lengths


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One strategy: a differentiation mode and a trajectory checkpoint schedule.

    Attributes:
      mode: differentiation mode (``metagrad.MODES``); ``plan`` accepts any label its ``build``
        understands.
      schedule: trajectory checkpoint schedule (see ``metagrad.unroll``).
      steps: the loop's number of steps T, if known. It is not part of the strategy's identity
        (equality ignores it) but lets ``plan`` scale the estimate to the whole loop.
    """

    mode: str
    schedule: Schedule = None
    steps: int | None = dataclasses.field(default=None, compare=False)

    @property
    def name(self) -> str:
        schedule = "every step" if self.schedule is None else f"schedule={self.schedule}"
        return f"{self.mode}, {schedule}"


@dataclasses.dataclass(frozen=True)
class PlanRow:
    """What one candidate costs (bytes, FLOPs, estimated seconds) and whether it fits."""

    candidate: Candidate
    temp_bytes: int
    total_bytes: int
    flops: float
    bytes_accessed: float
    estimated_s: float
    fits: bool
    measured_s: float | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every candidate's row and the choice (``None`` if nothing fits the budget)."""

    rows: tuple[PlanRow, ...]
    choice: PlanRow | None
    memory_budget: int | None

    def table(self) -> list[list[Any]]:
        """Rows for printing: strategy, temp MiB, total MiB, GFLOP, GB accessed, est. ms,
        measured ms (``autotune``; "" where not timed), fits, chosen."""
        return [
            [
                r.candidate.name,
                r.temp_bytes / 2**20,
                r.total_bytes / 2**20,
                r.flops / 1e9,
                r.bytes_accessed / 1e9,
                r.estimated_s * 1e3,
                "" if r.measured_s is None else r.measured_s * 1e3,
                "yes" if r.fits else "no",
                "◀" if r is self.choice else "",
            ]
            for r in self.rows
        ]


def nested_schedule(steps: int) -> tuple[int, int] | None:
    """Two nested levels for ``steps`` steps: segments of ~T^(2/3) steps split into ~T^(1/3).

    About 3·T^(1/3) states are kept and each step is recomputed twice: a two-level instance of
    multi-level checkpointing (Griewank & Walther 2000). ``(64, 8)`` for T=512.

    Returns:
      ``(outer, inner)``, or ``None`` when the two levels would not differ.
    """
    outer = max(4, round(steps ** (2 / 3)))
    inner = max(2, round(steps ** (1 / 3)))
    return (outer, inner) if outer > inner else None


def default_candidates(steps: int) -> tuple[Candidate, ...]:
    """Every mode with no schedule, √T checkpoints and, for long loops (T ≥ 64), two nested levels
    (``nested_schedule``). Each candidate carries ``steps``."""
    schedules: list[Schedule] = [None]
    if steps >= 4:
        schedules.append("sqrt")
    nested = nested_schedule(steps) if steps >= 64 else None
    if nested is not None:
        schedules.append(nested)
    return tuple(Candidate(m, s, steps) for s in schedules for m in MODES)


def loop_copies(schedule: Schedule, steps: int) -> int:
    """How many separate copies of the step loop ``metagrad.unroll`` compiles for ``schedule``.

    Each level of segments runs a loop over its full segments and, when the segment length does
    not divide the steps, one more loop over the tail; both contain the next level. XLA's cost
    analysis counts every copy's body once, so dividing its figures by this number gives the cost
    of one step of the trajectory.

    Args:
      schedule: as for ``metagrad.unroll``.
      steps: T.

    Returns:
      The number of innermost step loops (1 without a schedule).
    """

    def count(n: int, segments: tuple[int, ...]) -> int:
        # Mirrors metagrad.unrolling._segmented_scan.
        if not segments or n <= segments[0]:
            return 1
        k, inner = segments[0], segments[1:]
        return count(k, inner) + (count(n % k, inner) if n % k else 0)

    return count(steps, segment_lengths(schedule, steps))


@functools.cache
def machine_throughput() -> tuple[float, float]:
    """(FLOP/s, bytes/s) of this machine's default device, from a matmul and a large copy.

    Each is the median of 15 timed runs of about 10 ms (a 1024² matmul, a 64 MiB copy), measured
    once per process: on a machine shared with other jobs, the best of a few short runs varied
    by 1.8× (F) and 1.6× (B) between processes, and the estimate ranks strategies by the
    ratio F / B.
    """
    n = 1024
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    big = jnp.ones((16 * 2**20,), jnp.float32)  # 64 MiB: beyond the caches
    copy = jax.jit(lambda x: x * 1.0001)
    jax.block_until_ready((matmul(a), copy(big)))

    def median_time(fn: Callable[[], Any], repeats: int = 15) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
        return sorted(times)[repeats // 2]

    flops = 2 * n**3 / median_time(lambda: matmul(a))
    bandwidth = 2 * big.nbytes / median_time(lambda: copy(big))
    return flops, bandwidth


def plan(
    build: Callable[[Candidate], tuple[Callable[..., Any], Sequence[Any]]],
    *,
    memory_budget: int | None = None,
    candidates: Sequence[Candidate],
    compiler_options: dict[str, Any] | None = None,
) -> Plan:
    """Compiles ``fn(*args)`` for every candidate and picks the fastest that fits.

    Args:
      build: ``candidate -> (fn, args)``: the function to compile (jitted or not) and its
        arguments, as arrays or ``jax.ShapeDtypeStruct``s (nothing is run).
      memory_budget: bytes that the compiled program (temp + arguments + outputs) may use;
        ``None`` means no limit.
      candidates: the strategies to consider. Those with ``steps`` get a whole-loop estimate
        (see the module docstring).
      compiler_options: XLA options for these analysis-only compilations, e.g.
        ``ANALYSIS_COMPILER_OPTIONS`` (``None``: the defaults).

    Returns:
      A ``Plan``. Its ``choice`` is the fitting candidate with the smallest estimated time,
      or ``None``.
    """
    _check_budget(memory_budget)
    if not candidates:
        raise ValueError("plan: candidates is empty; pass at least one Candidate.")
    rows = []
    for candidate in candidates:
        fn, args = build(candidate)
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        compiled = jitted.lower(*args).compile(compiler_options)
        rows.append(evaluate(candidate, compiled, memory_budget=memory_budget))
    estimated = estimate_times(rows)
    return Plan(estimated, choose(estimated, memory_budget), memory_budget)


ANALYSIS_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 0}
"""XLA options for compilations whose analyses are read but that are never run. The backend
optimisation level only changes LLVM code generation, after buffer assignment and HLO cost
analysis: memory and cost figures are unchanged, and compiling takes about half as long."""


def evaluate(candidate: Candidate, compiled: Any, *, memory_budget: int | None = None) -> PlanRow:
    """The plan row of one compiled candidate: its memory, cost and estimated time.

    Args:
      candidate: the strategy that ``compiled`` implements.
      compiled: its compiled executable (``jax.jit(fn).lower(*args).compile()``).
      memory_budget: bytes; decides ``fits`` (``None``: everything fits).

    Returns:
      A ``PlanRow``. With ``candidate.steps``, ``estimated_s`` covers the whole loop (T steps);
      otherwise it is the roofline of XLA's once-per-loop-body figures (module docstring). Pass
      several rows to ``estimate_times`` for the better estimate of scheduled candidates.
    """
    _check_budget(memory_budget)
    cost = cost_of_compiled(compiled)
    raw = compiled.cost_analysis()
    raw = (raw[0] if raw else {}) if isinstance(raw, list) else (raw or {})
    accessed = float(raw.get("bytes accessed", 0.0))
    fits = memory_budget is None or cost.total_bytes <= memory_budget
    row = PlanRow(
        candidate, cost.temp_bytes, cost.total_bytes, cost.flops, accessed, float("nan"), fits
    )
    return estimate_times([row])[0]


def estimate_times(rows: Sequence[PlanRow]) -> tuple[PlanRow, ...]:
    """Re-estimates every row's time from all rows' figures (see the module docstring).

    A scheduled candidate's FLOPs per step use the every-step ``reverse``, ``remat`` and
    same-mode rows with the same ``steps``, and ``remat``'s memory traffic uses ``reverse``'s
    temp memory, when those rows are present; ``evaluate`` (one row alone) falls back to dividing
    by ``loop_copies`` and to the row's own temp memory.

    Args:
      rows: plan rows, e.g. from ``evaluate``.

    Returns:
      The rows, in order, with ``estimated_s`` replaced.
    """
    flops_per_s, bytes_per_s = machine_throughput()
    every_step = {
        (r.candidate.mode, r.candidate.steps): r
        for r in rows
        if r.candidate.schedule is None and r.candidate.steps
    }
    out = []
    for r in rows:
        c = r.candidate
        if not c.steps:
            estimate = max(r.flops / flops_per_s, r.bytes_accessed / bytes_per_s)
            out.append(dataclasses.replace(r, estimated_s=estimate))
            continue
        levels = len(segment_lengths(c.schedule, c.steps))
        same, remat, reverse = (every_step.get((m, c.steps)) for m in (c.mode, "remat", "reverse"))
        if levels and same and remat and reverse:
            per_step = same.flops + levels * max(0.0, remat.flops - reverse.flops)
        else:
            per_step = r.flops / loop_copies(c.schedule, c.steps)
        traffic = r.temp_bytes
        if c.mode == "remat" and reverse:
            # remat produces and consumes reverse's per-step residuals, one step at a time.
            traffic = max(traffic, reverse.temp_bytes)
        estimate = c.steps * per_step / flops_per_s + 2 * traffic / bytes_per_s
        out.append(dataclasses.replace(r, estimated_s=estimate))
    return tuple(out)


def choose(rows: Sequence[PlanRow], memory_budget: int | None) -> PlanRow | None:
    """The row with the smallest estimated time among those whose total memory fits
    ``memory_budget`` (ties: the smaller temp memory), or ``None`` if none fits."""
    _check_budget(memory_budget)
    fitting = [r for r in rows if memory_budget is None or r.total_bytes <= memory_budget]
    return min(fitting, key=lambda r: (r.estimated_s, r.temp_bytes)) if fitting else None


def _check_budget(memory_budget: int | None) -> None:
    if memory_budget is not None and (
        not isinstance(memory_budget, int) or isinstance(memory_budget, bool) or memory_budget <= 0
    ):
        raise ValueError(
            f"memory_budget must be a positive number of bytes (int) or None; got {memory_budget!r}."
        )


AUTOTUNE_WITHIN = 1.5
"""``autotune`` times the fitting candidates whose estimate is at most this factor above the best.
The estimate's error against measured times is within ±50 % on the long-unroll benchmark
(``docs/long_unroll.md``), so a candidate estimated 1.5x slower than the best may still win."""


def autotune(
    result: Plan,
    build: Callable[[Candidate], tuple[Callable[..., Any], Sequence[Any]]],
    *,
    within: float = AUTOTUNE_WITHIN,
    repeats: int = 3,
    seed: int = 0,
) -> Plan:
    """Times the most promising fitting candidates of ``result`` and picks the fastest measured.

    The estimate ranks strategies from compiled analyses alone; when two are close, which one is
    faster depends on effects it does not model (caches, how well the loop body's kernels fuse).
    ``autotune`` settles those close calls by running them, as XLA's and Triton's autotuners do
    for kernels: every fitting candidate whose estimate is within ``within`` × the best is
    compiled (fully optimised), run once to warm up, then timed in ``repeats`` interleaved rounds
    (one run of each per round, so that a change of the machine's load affects all alike); the
    median decides. Candidates that do not fit are never run.

    Args:
      result: a ``Plan`` from ``plan`` (same candidates as ``build`` understands).
      build: ``candidate -> (fn, args)`` as for ``plan``. Arguments given as
        ``jax.ShapeDtypeStruct`` are replaced by example values (``example_arguments``): the
        time of a program without data-dependent control flow does not depend on the values.
      within: time only the candidates whose estimate ≤ ``within`` × the smallest fitting estimate
        (≥ 1).
      repeats: timed rounds (≥ 1).
      seed: seed of the example values.

    Returns:
      A ``Plan`` with the same rows, ``measured_s`` set on those timed, and ``choice`` the fastest
      timed (unchanged, and nothing run, if nothing fits or only one candidate is close).
    """
    if not within >= 1.0:
        raise ValueError(f"autotune: within must be >= 1 (e.g. 1.5); got {within!r}.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"autotune: repeats must be a positive int; got {repeats!r}.")
    if result.choice is None:
        return result
    limit = within * result.choice.estimated_s
    timed = [r for r in result.rows if r.fits and r.estimated_s <= limit]
    if len(timed) < 2:  # nothing to settle
        return result
    programs = []
    for row in timed:
        fn, args = build(row.candidate)
        args = example_arguments(args, seed=seed)
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        compiled = jitted.lower(*args).compile()
        jax.block_until_ready(compiled(*args))  # warm-up
        programs.append((compiled, args))
    times: list[list[float]] = [[] for _ in timed]
    for _ in range(repeats):
        for (compiled, args), out in zip(programs, times, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            out.append(time.perf_counter() - start)
    measured = {id(r): sorted(t)[len(t) // 2] for r, t in zip(timed, times, strict=True)}
    rows = tuple(
        dataclasses.replace(r, measured_s=measured[id(r)]) if id(r) in measured else r
        for r in result.rows
    )
    timed_rows = [r for r in rows if r.measured_s is not None]
    choice = min(timed_rows, key=lambda r: (r.measured_s, r.estimated_s))
    return Plan(rows, choice, result.memory_budget)


def example_arguments(args: Any, *, seed: int = 0) -> Any:
    """``args`` with every ``jax.ShapeDtypeStruct`` replaced by an example array of its shape and
    dtype: floating point ~ N(0, 0.01²), integers and booleans zero. Concrete arrays are kept."""
    leaves, treedef = jax.tree.flatten(args)
    out = []
    # Concrete values even when called while a function is being traced (unroll's mode="auto").
    with jax.ensure_compile_time_eval():
        key = jax.random.key(seed)
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, jax.ShapeDtypeStruct):
                out.append(leaf)
            elif jnp.issubdtype(leaf.dtype, jnp.inexact):
                noise = jax.random.normal(jax.random.fold_in(key, i), leaf.shape, leaf.dtype)
                out.append(0.01 * noise)
            else:
                out.append(jnp.zeros(leaf.shape, leaf.dtype))
    return jax.tree.unflatten(treedef, out)


def largest_fitting_steps(
    total_bytes_at: Callable[[int], int],
    memory_budget: int,
    *,
    limit: int = 1 << 20,
    start: int = 1,
) -> int:
    """The largest number of inner steps T whose compiled program fits ``memory_budget``.

    Compiled memory grows monotonically with T for every strategy, so a doubling search followed
    by bisection finds T with about 2·log2(T) compilations (nothing is run).

    Args:
      total_bytes_at: ``T -> bytes`` the compiled program needs at T inner steps (for instance
        ``compiled_cost(fn_at(T), *args_at(T)).total_bytes``).
      memory_budget: bytes available.
      limit: stop searching beyond this T (returned if even ``limit`` fits).
      start: a T to begin the doubling from (default 1), e.g. the largest T already measured.
        If it does not fit, the search starts again from 1.

    Returns:
      The largest fitting T, or 0 if not even one step fits.
    """
    if not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive int of bytes; got {memory_budget!r}.")
    if not isinstance(start, int) or not 1 <= start <= limit:
        raise ValueError(f"start must be an int in [1, limit={limit}]; got {start!r}.")
    if start > 1 and total_bytes_at(start) > memory_budget:
        start = 1
    if start == 1 and total_bytes_at(1) > memory_budget:
        return 0
    if start == limit:
        return limit
    fits, too_big = start, None
    while too_big is None:  # doubling: fits < too_big brackets the answer
        trial = min(2 * fits, limit)
        if total_bytes_at(trial) <= memory_budget:
            fits = trial
            if fits == limit:
                return limit
        else:
            too_big = trial
    while too_big - fits > 1:
        middle = (fits + too_big) // 2
        if total_bytes_at(middle) <= memory_budget:
            fits = middle
        else:
            too_big = middle
    return fits


def parse_bytes(text: str) -> int:
    """``"4GiB"``, ``"512MiB"``, ``"1.5e9"`` -> bytes."""
    units = {
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "b": 1,
    }
    lowered = text.strip().lower()
    unit = next((u for u in sorted(units, key=len, reverse=True) if lowered.endswith(u)), "")
    number, factor = lowered[: len(lowered) - len(unit)], units.get(unit, 1)
    try:
        value = float(number) * factor
    except ValueError:
        value = -1.0
    # NaN, infinity and sizes under a byte are refused: none of them is a budget a loop can fit.
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(
            f"memory budget must be a finite size of at least one byte, such as 4GiB, 512MiB or "
            f"1e9; got {text!r}."
        )
    return int(value)
