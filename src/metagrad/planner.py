"""Choosing a differentiation strategy from a memory budget, from XLA's own analyses.

A *strategy* is a differentiation mode plus a trajectory checkpoint schedule. The planner compiles
the meta-gradient of each candidate without running it, reads the compiled memory
(``memory_analysis``) and cost (``cost_analysis``: FLOPs and bytes accessed), and estimates the
time with a roofline, ``max(flops / F, bytes / B)``. F and B are measured once per process on this
machine with two micro-benchmarks. It then picks the fastest candidate that fits the budget.

XLA's cost analysis counts the body of a loop once, whatever its trip count. For unrolled loops the
estimate is therefore "per iteration of each loop". It is comparable between candidates of one
problem (they have the same number of steps), but it is not an absolute run time. Bytes accessed is
what separates the modes: mixed mode does more FLOPs than reverse-over-reverse yet runs faster,
because it moves far fewer bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from metagrad.autodiff import MODES
from metagrad.memory import cost_of_compiled

Schedule = None | int | str | tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One strategy: a differentiation mode and a trajectory checkpoint schedule."""

    mode: str
    schedule: Schedule = None

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


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every candidate's row and the choice (``None`` if nothing fits the budget)."""

    rows: tuple[PlanRow, ...]
    choice: PlanRow | None
    memory_budget: int | None

    def table(self) -> list[list[Any]]:
        """Rows for printing: strategy, temp MiB, total MiB, GFLOP, GB accessed, est. ms, fits,
        chosen."""
        return [
            [
                r.candidate.name,
                r.temp_bytes / 2**20,
                r.total_bytes / 2**20,
                r.flops / 1e9,
                r.bytes_accessed / 1e9,
                r.estimated_s * 1e3,
                "yes" if r.fits else "no",
                "◀" if r is self.choice else "",
            ]
            for r in self.rows
        ]


def default_candidates(steps: int) -> tuple[Candidate, ...]:
    """Every mode with no schedule, √T checkpoints and, for long loops, two nested levels."""
    schedules: list[Schedule] = [None]
    if steps >= 4:
        schedules.append("sqrt")
    if steps >= 64:
        outer = max(4, round(steps ** (2 / 3)))
        inner = max(2, round(steps ** (1 / 3)))
        if outer > inner:
            schedules.append((outer, inner))
    return tuple(Candidate(m, s) for s in schedules for m in MODES)


@functools.cache
def machine_throughput() -> tuple[float, float]:
    """(FLOP/s, bytes/s) of this machine's default device, from a matmul and a large copy."""
    n = 512
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    big = jnp.ones((8 * 2**20,), jnp.float32)  # 32 MiB: beyond the caches
    copy = jax.jit(lambda x: x * 1.0001)
    jax.block_until_ready((matmul(a), copy(big)))

    def best(fn: Callable[[], Any], repeats: int = 5) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
        return min(times)

    flops = 2 * n**3 / best(lambda: matmul(a))
    bandwidth = 2 * big.nbytes / best(lambda: copy(big))
    return flops, bandwidth


def plan(
    build: Callable[[Candidate], tuple[Callable[..., Any], Sequence[Any]]],
    *,
    memory_budget: int | None = None,
    candidates: Sequence[Candidate],
) -> Plan:
    """Compiles ``fn(*args)`` for every candidate and picks the fastest that fits.

    Args:
      build: ``candidate -> (fn, args)``: the function to compile (jitted or not) and its
        arguments, as arrays or ``jax.ShapeDtypeStruct``s (nothing is run).
      memory_budget: bytes that the compiled program (temp + arguments + outputs) may use;
        ``None`` means no limit.
      candidates: the strategies to consider.

    Returns:
      A ``Plan``. Its ``choice`` is the fitting candidate with the smallest estimated time,
      or ``None``.
    """
    if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget <= 0):
        raise ValueError(
            f"memory_budget must be a positive number of bytes (int) or None; got {memory_budget!r}."
        )
    if not candidates:
        raise ValueError("plan: candidates is empty; pass at least one Candidate.")
    flops_per_s, bytes_per_s = machine_throughput()
    rows = []
    for candidate in candidates:
        fn, args = build(candidate)
        jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
        compiled = jitted.lower(*args).compile()
        cost = cost_of_compiled(compiled)
        raw = compiled.cost_analysis()
        raw = (raw[0] if raw else {}) if isinstance(raw, list) else (raw or {})
        accessed = float(raw.get("bytes accessed", 0.0))
        estimate = max(cost.flops / flops_per_s, accessed / bytes_per_s)
        fits = memory_budget is None or cost.total_bytes <= memory_budget
        rows.append(
            PlanRow(
                candidate, cost.temp_bytes, cost.total_bytes, cost.flops, accessed, estimate, fits
            )
        )
    fitting = [r for r in rows if r.fits]
    choice = min(fitting, key=lambda r: (r.estimated_s, r.temp_bytes)) if fitting else None
    return Plan(tuple(rows), choice, memory_budget)


def largest_fitting_steps(
    total_bytes_at: Callable[[int], int], memory_budget: int, *, limit: int = 1 << 20
) -> int:
    """The largest number of inner steps T whose compiled program fits ``memory_budget``.

    Compiled memory grows monotonically with T for every strategy, so a doubling search followed
    by bisection finds T with about 2·log2(T) compilations (nothing is run).

    Args:
      total_bytes_at: ``T -> bytes`` the compiled program needs at T inner steps (for instance
        ``compiled_cost(fn_at(T), *args_at(T)).total_bytes``).
      memory_budget: bytes available.
      limit: stop searching beyond this T (returned if even ``limit`` fits).

    Returns:
      The largest fitting T, or 0 if not even one step fits.
    """
    if not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive int of bytes; got {memory_budget!r}.")
    if total_bytes_at(1) > memory_budget:
        return 0
    fits, too_big = 1, None
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
        value = float(number)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(
            f"memory budget must be a positive size such as 4GiB, 512MiB or 1e9; got {text!r}."
        )
    return int(value * factor)
