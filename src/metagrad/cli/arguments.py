"""Parsing and checking command-line values, with errors that name the command and the flag.

Every sub-command uses these, so that a bad value reads the same everywhere:
``metagrad bench meta-grad: --modes takes a comma-separated subset of reverse, remat, mixflow;
got 'fast'.`` A ``SystemExit`` with a message prints one line and exits with status 1, without a
traceback.

The ``type=`` functions (``positive_int``, ``positive_number``, ``json_file``, ``run_folder``, ...)
check a value when the command line is parsed, before any work starts: argparse then prints
``argument --outer-lr: must be a positive number; got -1`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


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


def subcommands(parser: argparse.ArgumentParser, dest: str, metavar: str = "COMMAND") -> Any:
    """The required sub-command group of ``parser`` (its chosen name lands in ``args.dest``)."""
    group = parser.add_subparsers(dest=dest, metavar=metavar)
    group.required = True
    return group


def add_command(
    group: Any, name: str, *, run: Callable[[argparse.Namespace], int], **kwargs: Any
) -> argparse.ArgumentParser:
    """Adds the sub-command ``name`` (``help=``, ``description=`` ...) to ``group``; ``main``
    calls ``run(args)`` when it is chosen."""
    parser = group.add_parser(name, **kwargs)
    parser.set_defaults(func=run)
    return parser


def positive_int(text: str) -> int:
    """``type=`` for counts that must be at least 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """``type=`` for counts and periods where 0 means "none" (or "never")."""
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_number(text: str) -> float:
    """``type=`` for finite numbers > 0 (learning rates, strengths, tolerances)."""
    return _number(text, float, lambda v: v > 0, "a finite number > 0")


def non_negative_number(text: str) -> float:
    """``type=`` for finite numbers >= 0 (damping, momentum)."""
    return _number(text, float, lambda v: v >= 0, "a finite number >= 0")


def momentum(text: str) -> float:
    """``type=`` for a momentum coefficient β: a number in [0, 1)."""
    return _number(text, float, lambda v: 0 <= v < 1, "a number >= 0 and < 1")


def byte_size(text: str) -> int:
    """``type=`` for a memory size such as ``4GiB``, ``512MB`` or ``1e9`` (bytes)."""
    from metagrad.planner import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def fraction(text: str) -> float:
    """``type=`` for a fraction strictly between 0 and 1."""
    return _number(text, float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")


def _number(text: str, kind: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
    return value


def json_file(text: str) -> Path:
    """``type=`` for ``--json``: a file path whose folder exists or can be created, writable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a folder; give a file path such as {str(path / 'results.json')!r}"
        )
    _check_creatable(path.parent, text)
    return path


def run_folder(text: str) -> Path:
    """``type=`` for ``--out``: a folder (existing, or creatable), not a file, writable."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; --out takes a folder")
    _check_creatable(path, text)
    return path


def _check_creatable(folder: Path, text: str) -> None:
    """Fails unless ``folder`` is, or could be created as, a folder that accepts a new file.

    Nothing is created: a probe file is written (and removed) in the nearest folder that exists,
    because permission bits do not say everything (read-only mounts, pseudo file systems, root).
    """
    import tempfile

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r}: cannot write to {folder} ({existing} is a file, not a folder); choose a "
            "folder you can write to"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".metagrad-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise argparse.ArgumentTypeError(
            f"{text!r}: cannot write to {folder} ({reason} in {existing}); choose a folder you "
            "can write to"
        ) from None


def add_lm_size_arguments(
    parser: argparse.ArgumentParser, *, batch_help: str = "LM batch size (default 4)"
) -> None:
    """Adds ``--batch``, ``--seq``, ``--layers`` and ``--width``: the sizes of the decoder-LM case
    that ``bench meta-grad``, ``check`` and ``plan`` build (``metagrad.bench.meta_grad.LMSize``)."""
    parser.add_argument("--batch", type=positive_int, help=batch_help)
    parser.add_argument("--seq", type=positive_int, help="LM sequence length (default 512)")
    parser.add_argument("--layers", type=positive_int, help="LM layers (default 4)")
    parser.add_argument("--width", type=positive_int, help="LM width (default 128)")


def add_outputs(
    parser: argparse.ArgumentParser,
    *,
    json_help: str = "write all figures to this JSON file",
    out_help: str | None = None,
    out_default: str | None = None,
    out_required: bool = False,
) -> None:
    """Adds ``--json PATH`` and (with ``out_help``) ``--out DIR``, both checked when parsed.

    Args:
      parser: the sub-command's parser.
      json_help: help of ``--json``.
      out_help: help of ``--out``; ``None``: the command has no ``--out``.
      out_default: default run folder.
      out_required: ``--out`` must be given (commands that read an earlier run).
    """
    parser.add_argument("--json", type=json_file, help=json_help)
    if out_help is not None:
        default = Path(out_default) if out_default is not None else None
        parser.add_argument(
            "--out", type=run_folder, default=default, required=out_required, help=out_help
        )


def add_run_arguments(
    parser: argparse.ArgumentParser, *, old_resume_flag: str | None = None
) -> None:
    """Adds the flags every training command shares: ``--restart`` and ``--on-nonfinite``.

    A run folder that holds a run is resumed (``metagrad.runs``); ``--restart`` starts over and
    moves the earlier files to ``OUT/previous/<n>/``.

    Args:
      parser: the training command's parser.
      old_resume_flag: an older flag kept as an alias: ``"--no-resume"`` (same as ``--restart``)
        or ``"--resume"`` (resuming is the default now; accepted and ignored).
    """
    group = parser.add_argument_group("run folder (resumed when it holds a run)")
    names = ["--restart"] + ([old_resume_flag] if old_resume_flag == "--no-resume" else [])
    group.add_argument(
        *names,
        dest="restart",
        action="store_true",
        help="start over; the earlier run's files move to OUT/previous/<n>/ (nothing is deleted)",
    )
    if old_resume_flag == "--resume":
        group.add_argument("--resume", action="store_true", help="the default (kept for scripts)")
    group.add_argument(
        "--on-nonfinite",
        choices=("stop", "skip"),
        default="stop",
        help="a step with a NaN/inf loss or meta-gradient stops the run (default; the checkpoint "
        "on disk stays the last finite one) or is skipped (not applied)",
    )
