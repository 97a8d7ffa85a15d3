"""Numerics of the LM meta-gradient: each mode in float32 and in float64 against a float64 reverse
reference, with ε outside Adam's root (optax's default) and inside it (metagrad's default).

Shows the two things `docs/numerics.md` states:
* in float64 the three modes compute the same meta-gradient (they differ by rounding, ~1e-15);
* in float32 they agree with the reference to the level that the conditioning allows: about the
  sensitivity's amplification × float32 rounding when ε is inside the root, and not at all when
  it is outside.

Run: python benchmarks/numerics.py [--seq 128 --layers 2] (about 5 min on 2 CPU cores). Writes
docs/results/numerics_cpu.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import jax

from metagrad import MODES
from metagrad.bench.meta_grad import build
from metagrad.diagnostics import float64_reference, relative_error
from metagrad.files import write_json
from metagrad.markdown import table


def measure(seq: int, layers: int, eps_root: float) -> dict:
    sizes = {"seq": seq, "layers": layers, "eps_root": eps_root}
    built = build("lm", "reverse", **sizes)

    def make(mode: str):
        return build("lm", mode, **sizes).fn

    ref = float64_reference(make, built.args, perturb=built.perturb, directions=1)
    row = {"eps_root": eps_root, "sensitivity": ref.sensitivity, "float32": {}, "float64": {}}
    for mode in MODES:
        row["float32"][mode] = relative_error(jax.jit(make(mode))(*built.args)[1], ref.grad)
        with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
            g64 = jax.jit(make(mode))(*ref.args)[1]
        row["float64"][mode] = relative_error(g64, ref.grad)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--json", default="docs/results/numerics_cpu.json")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [measure(args.seq, args.layers, eps) for eps in (0.0, 1e-8)]
    lines = [
        [
            f"{r['eps_root']:g}",
            mode,
            f"{r['float32'][mode]:.1e}",
            f"{r['float64'][mode]:.1e}",
            f"{r['sensitivity']:.1e}",
        ]
        for r in rows
        for mode in MODES
    ]
    print(
        table(
            [
                "eps_root",
                "mode",
                "float32 vs float64 ref.",
                "float64 vs float64 ref.",
                "sensitivity",
            ],
            lines,
        )
    )
    payload = {
        "case": f"lm, seq={args.seq}, layers={args.layers} (metagrad.bench.meta_grad.build)",
        "backend": jax.default_backend(),
        "reference": "float64, reverse mode, CPU",
        "delta": 1e-6,
        "rows": rows,
        "wall_s": time.perf_counter() - start,
    }
    write_json(args.json, payload)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
