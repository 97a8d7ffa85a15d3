"""Joins coordinate checks of docs/width.md that were run by separate commands into one JSON and
one plot (one row per optimiser / parameterisation / initialisation).

    python benchmarks/width_coord_join.py OUT_NAME RUN.json [RUN.json ...]

reads the ``--json`` files of ``metagrad width coord-check`` runs, keeps their coordinate checks
in the order given (optionally only one parameterisation of a file: ``RUN.json:mup`` or
``RUN.json:sp``) and writes docs/results/width_coord_check_<OUT_NAME>.json and
docs/images/width_coord_check_<OUT_NAME>.png.
"""

import json
import sys
from pathlib import Path

from metagrad.files import write_json
from metagrad.optim.coord_check import plot_coord_checks
from metagrad.optim.merge import infinities_from_strings


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    name, sources = argv[0], argv[1:]
    checks, widths, task = [], set(), None
    for source in sources:
        path, _, only = source.partition(":")
        if only not in ("", "mup", "sp"):
            raise SystemExit(f"width_coord_join: {source!r}: the suffix must be :mup or :sp.")
        payload = json.loads(Path(path).read_text())
        task = task or payload["task"]
        for check in payload["coord_checks"]:
            if only and check["config"]["param"] != only:
                continue
            checks.append(check)
            widths.update(check["widths"])
    if not checks:
        raise SystemExit("width_coord_join: no coordinate checks selected.")
    results, images = Path("docs/results"), Path("docs/images")
    payload = {"task": task, "widths": sorted(widths), "coord_checks": checks}
    write_json(results / f"width_coord_check_{name}.json", payload)
    plot_coord_checks(
        infinities_from_strings(checks), str(images / f"width_coord_check_{name}.png")
    )
    print(f"wrote {results / f'width_coord_check_{name}.json'} and the plot")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
