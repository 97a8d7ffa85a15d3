"""Parsing and checking command-line values, with errors that name the command and the flag.

Every sub-command uses these, so that a bad value reads the same everywhere:
``metagrad bench meta-grad: --modes takes a comma-separated subset of reverse, remat, mixflow;
got 'fast'.`` A ``SystemExit`` with a message prints one line and exits with status 1, without a
traceback.
"""

from __future__ import annotations

from collections.abc import Sequence


def fail(command: str, message: str) -> SystemExit:
    """The ``SystemExit`` to raise for a bad value: ``"{command}: {message}"``."""
    return SystemExit(f"{command}: {message}")


def parse_list(text: str, allowed: Sequence[str], flag: str, command: str) -> list[str]:
    """A comma-separated, non-empty subset of ``allowed``.

    Args:
      text: the flag's value, e.g. ``"reverse,mixflow"``.
      allowed: the valid items.
      flag: the flag's name, e.g. ``"--modes"``.
      command: the command, e.g. ``"metagrad bench meta-grad"``.

    Returns:
      The items in the order given.

    Raises:
      SystemExit: naming the command, the flag, the valid items and the value received.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(t not in allowed for t in items):
        raise fail(
            command,
            f"{flag} takes a comma-separated subset of {', '.join(allowed)}; got {text!r}.",
        )
    return items


def parse_positive_ints(text: str, flag: str, command: str, example: str = "8,32,128") -> list[int]:
    """Comma-separated positive integers, sorted and without repeats.

    Raises:
      SystemExit: naming the command and the flag, with an ``example`` of a valid value.
    """
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise fail(
            command, f"{flag} takes comma-separated positive ints, e.g. {example}; got {text!r}."
        )
    return sorted(set(values))


def parse_size(text: str, flag: str, command: str) -> int:
    """A byte count such as ``4GiB``, ``512MiB`` or ``1e9`` (``metagrad.planner.parse_bytes``)."""
    from metagrad.planner import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as err:
        raise fail(command, f"{flag}: {err}") from None


def require_positive(value: int | None, flag: str, command: str) -> None:
    """Exits unless ``value`` is ``None`` (not given) or a positive integer."""
    if value is not None and value < 1:
        raise fail(command, f"{flag} must be a positive integer; got {value}.")
