"""Trajectory checkpoint schedules: which inner states the backward pass of an unrolled loop keeps.

A schedule is ``None`` (every step), a segment length ``k``, ``"sqrt"`` or nested segment lengths
``(k1, k2, ...)``; see ``metagrad.unroll``. Both ``metagrad.unroll`` (which runs a schedule) and
``metagrad.planner`` (which costs one) read it through :func:`segment_lengths`.

References:
    Griewank & Walther, *Algorithm 799: Revolve*, ACM TOMS 26(1), 2000 (multi-level checkpointing).
    Chen, Xu, Zhang, Guestrin, *Training Deep Nets with Sublinear Memory Cost*, arXiv:1604.06174,
    2016 (√T checkpoints).
"""

from __future__ import annotations

import math

Schedule = None | int | str | tuple[int, ...]
"""A trajectory checkpoint schedule (see ``metagrad.unroll``)."""


def segment_lengths(schedule: Schedule, steps: int) -> tuple[int, ...]:
    """The nested segment lengths (outermost first) that ``schedule`` means for ``steps`` steps.

    Raises:
      ValueError: for a schedule that is not ``None``, a positive int, ``"sqrt"`` or a tuple of
        decreasing positive ints.
    """
    if schedule is None:
        return ()
    if schedule == "sqrt":
        return (max(1, math.isqrt(steps - 1) + 1),) if steps > 1 else ()
    if isinstance(schedule, int) and not isinstance(schedule, bool):
        schedule = (schedule,)
    if (
        isinstance(schedule, tuple)
        and schedule
        and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in schedule)
        and all(a > b for a, b in zip(schedule, schedule[1:], strict=False))
    ):
        return tuple(k for k in schedule if k < steps)
    raise ValueError(
        "unroll: schedule must be None (keep every step), a positive int k (keep every k-th "
        "state), 'sqrt', or a tuple of strictly decreasing positive ints (nested segments, "
        f"e.g. (64, 8)); got {schedule!r}."
    )
