"""The ``metagrad`` command line.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and
returning an exit code). Adding a command is adding a module and one line in ``_COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Module names (inside metagrad.cli) that provide top-level sub-commands.
_COMMANDS: tuple[str, ...] = ("bench", "check", "fewshot", "meta", "plan", "width")


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of the ``metagrad`` command with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="metagrad",
        description="Scalable meta-learning and bilevel optimisation in JAX.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _COMMANDS:
        importlib.import_module(f"metagrad.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metagrad`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
