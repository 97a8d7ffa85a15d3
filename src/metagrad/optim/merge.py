"""Joining sweeps of the same experiment run at different widths (e.g. the widest on its own)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metagrad.optim.sweep import summarize


def merge_sweeps(payloads: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One ``metagrad width sweep`` payload from several, with their widths side by side.

    Sweeps of the same configuration (optimiser, parameterisation, damping rule, ...) over the same
    grid are joined into one, whose ``summary`` (best value per width and its drift) is computed
    over all widths. Widths given twice keep the first payload's result.

    Args:
      payloads: JSON payloads written by ``metagrad width sweep`` (``{"sweeps": [...], ...}``).

    Returns:
      A payload of the same form.

    Raises:
      ValueError: if the payloads' grids differ, or a configuration is missing from one of them.
    """
    if not payloads:
        raise ValueError("merge_sweeps: give at least one sweep payload.")
    merged: dict[str, dict[str, Any]] = {}
    for payload in payloads:
        for sweep in payload["sweeps"]:
            key = json.dumps(sweep["config"], sort_keys=True)
            key += f"|{sweep['over']}|{sweep.get('lr')}"
            sweep = {**sweep, "results": infinities_from_strings(sweep["results"])}
            if key not in merged:
                merged[key] = sweep
                continue
            into = merged[key]
            if into["values"] != sweep["values"] or into["steps"] != sweep["steps"]:
                raise ValueError(
                    "merge_sweeps: sweeps of one configuration must share values and steps; got "
                    f"{into['values']} / {into['steps']} and {sweep['values']} / {sweep['steps']}."
                )
            for width, result in sweep["results"].items():
                into["results"].setdefault(width, result)
    sweeps = []
    for sweep in merged.values():
        widths = sorted(int(w) for w in sweep["results"])
        sweep["widths"] = widths
        sweep["results"] = {str(w): sweep["results"][str(w)] for w in widths}
        sweep["summary"] = summarize(sweep["results"], widths, sweep["values"])
        sweeps.append(sweep)
    widths = sorted({w for s in sweeps for w in s["widths"]})
    return {**payloads[0], "widths": widths, "sweeps": sweeps}


def infinities_as_strings(x: Any) -> Any:
    """Non-finite floats become the strings "inf" / "-inf" / "nan" (JSON has no infinities)."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: infinities_as_strings(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [infinities_as_strings(v) for v in x]
    return x


def infinities_from_strings(x: Any) -> Any:
    """The inverse of ``infinities_as_strings``."""
    if isinstance(x, str) and x in ("inf", "-inf", "nan"):
        return float(x)
    if isinstance(x, dict):
        return {k: infinities_from_strings(v) for k, v in x.items()}
    if isinstance(x, list):
        return [infinities_from_strings(v) for v in x]
    return x


def merge_sweep_files(paths: Sequence[str | Path]) -> dict[str, Any]:
    """``merge_sweeps`` of the JSON files at ``paths``, with an error naming a missing file."""
    payloads = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"merge_sweep_files: {path} does not exist; run the `metagrad width sweep ... "
                "--out` command that writes it first (docs/width.md lists them)."
            )
        payloads.append(json.loads(path.read_text()))
    return merge_sweeps(payloads)
