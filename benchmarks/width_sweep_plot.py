"""Joins the learning-rate sweeps of docs/width.md that were run in parts (the MLP's: widths
64…1024, then 2048 on its own; the decoder LM's: μP and SP by separate commands) and draws each
as one plot, with the JSON of the joined sweep beside it.

Run the `metagrad width sweep` commands of docs/width.md first; they write
runs/sweep/<name>_a/sweep_lr.json and runs/sweep/<name>_b/sweep_lr.json. Then

    python benchmarks/width_sweep_plot.py                 # every pair that is there
    python benchmarks/width_sweep_plot.py shampoo_graft   # one pair

writes docs/images/width_sweep_<name>.png and docs/results/width_sweep_<name>.json.
"""

import sys
from pathlib import Path

from metagrad.files import write_json
from metagrad.optim.merge import infinities_as_strings, merge_sweep_files
from metagrad.optim.sweep import plot_sweep

PAIRS = {  # docs image name: (first part, second part) under runs/sweep
    "kfac": ("kfac_a", "kfac_b"),
    "shampoo": ("shampoo_a", "shampoo_b"),
    "shampoo_eps6": ("sh6_a", "sh6_b"),
    "shampoo_graft": ("shampoo_graft_a", "shampoo_graft_b"),
    # The decoder LM (docs/width.md, "μP for the decoder LM"): μP with its rule, then SP.
    "lm_adam": ("lm_adam_mup", "lm_adam_random_sp"),  # the second: random read-out μP, SP
    "lm_kfac": ("lm_kfac_mup", "lm_kfac_sp"),
    "lm_shampoo": ("lm_shampoo",),
}


def main(names: list[str]) -> int:
    runs, images, results = Path("runs/sweep"), Path("docs/images"), Path("docs/results")
    chosen = names or [n for n, parts in PAIRS.items() if (runs / parts[0]).is_dir()]
    for name in chosen:
        if name not in PAIRS:
            raise SystemExit(
                f"width_sweep_plot: unknown sweep {name!r}; choose from {list(PAIRS)}."
            )
        merged = merge_sweep_files([runs / part / "sweep_lr.json" for part in PAIRS[name]])
        plot_sweep(merged["sweeps"], str(images / f"width_sweep_{name}.png"))
        write_json(results / f"width_sweep_{name}.json", infinities_as_strings(merged))
        for sweep in merged["sweeps"]:
            s = sweep["summary"]
            print(
                f"{name} {sweep['config']['param']}: best per width {s['best_per_width']}, moves "
                f"{s['best_shift_grid_steps']} grid steps; worse with width at the base optimum: "
                f"{s['worse_with_width_at_base_best'] or 'never'}"
            )
        print(f"wrote {images / f'width_sweep_{name}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
