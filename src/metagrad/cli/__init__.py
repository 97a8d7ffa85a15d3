"""The ``metagrad`` command line.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and
returning an exit code). Adding a command is adding a module and one line in ``_COMMANDS``.

Errors: a bad flag is refused when parsed (argparse, status 2); an error raised while a command
runs is printed as one line, ``metagrad fewshot train: error: ...``, with status 1. ``metagrad
--debug ...`` (or ``METAGRAD_DEBUG=1``) shows the traceback instead. Ctrl-C exits with status 130;
every training command resumes from its last checkpoint when run again.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from metagrad.cli.arguments import subcommands

# Module names (inside metagrad.cli) that provide top-level sub-commands.
_COMMANDS: tuple[str, ...] = ("bench", "check", "fewshot", "meta", "plan", "width")


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of the ``metagrad`` command with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="metagrad",
        description="Scalable meta-learning and bilevel optimisation in JAX.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (for reports)"
    )
    subparsers = subcommands(parser, "command")
    for name in _COMMANDS:
        importlib.import_module(f"metagrad.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metagrad`` console script.

    Returns:
      The exit status: 0 on success, 1 on an error (one line on stderr), 130 on Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("METAGRAD_DEBUG", "") not in ("", "0")
    command = " ".join(
        ["metagrad"]
        + [v for k, v in vars(args).items() if k == "command" or k.endswith(_SUBCOMMAND_KEYS)]
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as err:  # one line for the user; --debug for the traceback
        if debug:
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"{command}: error: {text}", file=sys.stderr)
        print("(run `metagrad --debug ...` to see the traceback)", file=sys.stderr)
        return 1


# Attributes of ``args`` that hold the names of nested sub-commands (``args.fewshot_command``).
_SUBCOMMAND_KEYS = ("_command", "benchmark")


if __name__ == "__main__":
    sys.exit(main())
