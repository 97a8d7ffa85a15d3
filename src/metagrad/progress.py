"""The one progress bar of the library (rich, on stderr).

Dataset builds, training runs, sweeps and benchmarks all show the same bar: what runs, how far it
is (done / total), an optional status text (loss, accuracy, current case), elapsed and remaining
time. It writes to stderr so that a command printing JSON or a table on stdout stays
machine-readable.

Use::

    with progress_bar() as bar:
        job = bar.add_task("meta-train", total=n)
        bar.update(job, advance=1, status="loss 0.31")
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress


def progress_bar(enabled: bool = True) -> Progress:
    """A ``rich.progress.Progress`` on stderr.

    rich is imported here, when a bar is made, so that importing a module that shows progress
    does not load it.

    Args:
      enabled: ``False`` gives a bar that prints nothing (tests, ``--no-progress``).

    Returns:
      The bar; use it as a context manager (or ``start()`` / ``stop()``).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _status_column_type()(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


@functools.cache
def _status_column_type() -> Any:
    """The column class that shows a task's ``status`` field, or nothing for tasks that have none
    (made on first use, so that rich is imported only then)."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class _StatusColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(str(task.fields.get("status", "")))

    return _StatusColumn


__all__ = ["progress_bar"]
