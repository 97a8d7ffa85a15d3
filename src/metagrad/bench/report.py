"""Measuring and reporting: compiled timings, rich tables and progress bars.

Memory and FLOPs come from XLA's analyses of the compiled program (deterministic). Times are the
median of repeated runs of the compiled program after a warm-up run (noisy: compare ratios taken in
one run, never assert them in tests).
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metagrad.memory import MiB, cost_of_compiled

console = Console(stderr=True)


def measure(fn: Callable[..., Any], args: Sequence[Any], repeats: int) -> dict[str, Any]:
    """Compiles ``fn`` for ``args``, reads its memory and FLOPs, and times it.

    Args:
      fn: a jitted function.
      args: its arguments.
      repeats: timed runs after one warm-up run (at least 1; the median is reported).

    Returns:
      A dict with ``temp_mib``, ``total_mib``, ``argument_mib``, ``output_mib``, ``gflops``,
      ``compile_s``, ``times_s`` (every timed run), ``median_s`` and ``output`` (the last result).
    """
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    cost = cost_of_compiled(compiled)
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {
        "temp_mib": cost.temp_bytes / MiB,
        "total_mib": cost.total_bytes / MiB,
        "argument_mib": cost.argument_bytes / MiB,
        "output_mib": cost.output_bytes / MiB,
        "gflops": cost.flops / 1e9,
        "compile_s": compile_s,
        "times_s": times,
        "median_s": statistics.median(times),
        "output": out,
    }


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Prints a table to the terminal (stdout)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    # Wide enough for the figures even when stdout is a file or a pipe (rich assumes 80 there).
    Console(width=max(shutil.get_terminal_size().columns, 150)).print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:.1e}"
    return str(value)


def progress() -> Progress:
    """A rich progress display (bar, current step, elapsed time) on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
