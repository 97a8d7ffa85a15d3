"""Reproduces docs/long_unroll.md: memory and time of every strategy against T, largest T in 4 GiB,
and the check of mode="auto"'s choices.

Runs ``metagrad bench unroll`` with its default sizes (LM: batch 2, sequence 128, 2 layers, width
64, Adam; MLP 128-512-512-10, batch 64, momentum SGD) for T ∈ {8, 32, 128, 512}, and writes
``docs/results/long_unroll_cpu.json`` and ``docs/images/long_unroll.png``.

    python benchmarks/long_unroll.py [extra metagrad bench unroll flags]
"""

import sys

from metagrad.cli import main

if __name__ == "__main__":
    sys.exit(
        main(
            [
                "bench",
                "unroll",
                "--json",
                "docs/results/long_unroll_cpu.json",
                "--out",
                "docs/images",
                *sys.argv[1:],
            ]
        )
    )
