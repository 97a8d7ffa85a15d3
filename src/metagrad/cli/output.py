"""Where a command's figures go: ``--json PATH`` and a copy in the run folder ``--out``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def write_results(
    args: argparse.Namespace, name: str | None, payload: Any, *, quiet: bool = False
) -> list[Path]:
    """Writes ``payload`` as JSON (atomically) to ``args.json`` and to ``args.out / name``.

    Either destination is skipped when its argument is unset (``None``), and the folder copy
    when ``name`` is ``None`` (commands whose ``--out`` holds only plots).

    Args:
      args: parsed arguments with ``json`` and ``out`` attributes (``Path`` or ``None``).
      name: file name inside ``args.out``, e.g. ``"maml.json"``.
      payload: anything ``metagrad.files.write_json`` takes.
      quiet: do not print "wrote PATH" on stderr.

    Returns:
      The paths written.
    """
    from metagrad.files import write_json

    paths = []
    if getattr(args, "out", None) is not None and name is not None:
        paths.append(Path(args.out) / name)
    if getattr(args, "json", None) is not None:
        paths.append(Path(args.json))
    for path in paths:
        write_json(path, payload)
    if not quiet and paths:
        from metagrad.bench.report import console

        for path in paths:
            console.print(f"wrote {path}")
    return paths
