"""Argument checks shared by configurations: one wording for every "must be one of" error."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def require_one_of(what: str, value: Any, choices: Iterable[Any]) -> None:
    """Raises a ``ValueError`` unless ``value`` is one of ``choices``.

    Args:
      what: the argument as the user wrote it, with its owner, e.g. ``"Algorithm: layers"``.
      value: what was received.
      choices: the accepted values, listed in the message.
    """
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{what} must be one of {listed}; got {value!r}.")
