"""Measuring and reporting: compiled timings, rich tables and progress bars.

Memory and FLOPs come from XLA's analyses of the compiled program (deterministic). Times are the
median of repeated runs of the compiled program after a warm-up run (noisy: compare ratios taken in
one run, never assert them in tests).

rich is imported when something is printed: ``console`` (a rich ``Console`` on stderr) is made on
first use, so importing this module, e.g. for :func:`measure`, does not load it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from metagrad.memory import MiB, cost_of_compiled


def __getattr__(name: str) -> Any:
    # ``console``: made on first access (PEP 562), then an ordinary module attribute.
    if name == "console":
        from rich.console import Console

        globals()["console"] = Console(stderr=True)
        return globals()["console"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def measure(
    fn: Callable[..., Any],
    args: Sequence[Any],
    repeats: int,
    *,
    lower_args: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Compiles ``fn`` for ``args``, reads XLA's memory and cost analyses, and times it.

    Wall-clock on a shared machine depends on what else runs, so the CPU time the process used
    (all threads, ``time.process_time``) and the load average around the measurement are
    reported too: ``cores_used = median CPU s / median wall s`` is how many cores the program
    actually got.

    Args:
      fn: a jitted function (anything with ``.lower(*args).compile()``).
      args: its arguments.
      repeats: timed runs after one warm-up run (at least 1; the median is reported).
      lower_args: arguments of ``fn.lower`` when they differ from those of the compiled program
        (a sharded step is lowered from its user-facing arguments and called with the placed,
        flattened ones); default ``args``.

    Returns:
      A dict with ``temp_mib``, ``total_mib``, ``argument_mib``, ``output_mib``, ``gflops``
      (XLA's count: a loop body is counted once), ``compile_s``, ``times_s`` and
      ``cpu_times_s`` (every timed run), ``median_s``, ``median_cpu_s``, ``cores_used``,
      ``load_avg`` (1-minute load before and after) and ``output`` (the last result).
    """
    load_before = _load()
    start = time.perf_counter()
    compiled = fn.lower(*(args if lower_args is None else lower_args)).compile()
    compile_s = time.perf_counter() - start
    cost = cost_of_compiled(compiled)
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times, cpu = [], []
    for _ in range(max(1, repeats)):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    median, median_cpu = statistics.median(times), statistics.median(cpu)
    return {
        "temp_mib": cost.temp_bytes / MiB,
        "total_mib": cost.total_bytes / MiB,
        "argument_mib": cost.argument_bytes / MiB,
        "output_mib": cost.output_bytes / MiB,
        "gflops": cost.flops / 1e9,
        "compile_s": compile_s,
        "times_s": times,
        "cpu_times_s": cpu,
        "median_s": median,
        "median_cpu_s": median_cpu,
        "cores_used": median_cpu / median if median > 0 else float("nan"),
        "load_avg": [load_before, _load()],
        "output": out,
    }


def _load() -> float:
    """One-minute load average (NaN where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - Windows
        return float("nan")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Prints a table to the terminal (stdout)."""
    from rich.console import Console
    from rich.table import Table

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
