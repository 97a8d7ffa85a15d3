"""What the differentiation mode means in practice: memory at T, and the largest T in a budget.

For each mode, the meta-gradient of one truncated window is compiled (nothing is run) at the
chosen T, and XLA's memory analysis gives its peak memory (temp + arguments + outputs). Then
:func:`metagrad.planner.largest_fitting_steps` finds the largest T whose compiled program fits the
budget (doubling, then bisection: about 2·log2(T) compilations per mode).

Compiled memory does not depend on XLA's backend optimisation level (buffer assignment is the
same), so these compilations use level 0, which compiles several times faster; compile times are
what this report spends, because the window is a ``lax.scan`` whose compile time does not grow
with T.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from metagrad.memory import MiB, cost_of_compiled
from metagrad.planner import largest_fitting_steps

Builder = Callable[[str, int], tuple[Any, tuple[Any, ...]]]
#: Compiler options of the report's compilations (see the module docstring).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def total_bytes(build: Builder, mode: str, steps: int) -> int:
    """Compiled peak memory (bytes) of the meta-gradient built by ``build(mode, steps)``."""
    fn, args = build(mode, steps)
    compiled = fn.lower(*args).compile(compiler_options=FAST_COMPILE)
    return cost_of_compiled(compiled).total_bytes


def memory_report(
    build: Builder,
    modes: Sequence[str],
    steps: int,
    budget: int,
    *,
    limit: int = 1 << 16,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Compiled memory of the meta-gradient per mode at T = ``steps``, and the largest T that fits.

    Args:
      build: ``(mode, T) -> (jitted fn, abstract args)``: the meta-gradient of one window.
      modes: differentiation modes to report.
      steps: the run's T.
      budget: memory budget in bytes.
      limit: largest T searched (reported as ``>= limit`` if it fits).
      show_progress: progress bar on stderr.

    Returns:
      One row per mode: ``mode``, ``steps``, ``total_mib`` at T, ``largest_steps`` within the
      budget, ``budget_mib``, ``limit_reached``.
    """
    from metagrad.progress import progress_bar

    rows = []
    bar = progress_bar() if show_progress else None
    task = None
    if bar is not None:
        bar.start()
        task = bar.add_task("memory report (compile only)", total=len(modes), status="")
    try:
        for mode in modes:
            cache: dict[int, int] = {}

            def at(t: int, mode: str = mode, cache: dict[int, int] = cache) -> int:
                if t not in cache:
                    if bar is not None:
                        bar.update(task, status=f"{mode}: compiling T={t}")
                    cache[t] = total_bytes(build, mode, t)
                return cache[t]

            largest = largest_fitting_steps(at, budget, limit=limit)
            rows.append(
                {
                    "mode": mode,
                    "steps": steps,
                    "total_mib": at(steps) / MiB,
                    "largest_steps": largest,
                    "limit_reached": largest >= limit,
                    "budget_mib": budget / MiB,
                    "compilations": len(cache),
                }
            )
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return rows
