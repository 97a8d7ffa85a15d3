"""Time of an inverse 4th root (Shampoo) and a damped inverse (K-FAC) by method, size and batching.

The measurements behind ``root_method="auto"`` (:func:`metagrad.optim.linalg.resolve_root_method`):
for each size, one matrix by ``eigh`` and by the coupled Newton iteration, and a stack of
``--batch`` same-shaped matrices in one batched call against one call per matrix. The matrices are
Shampoo-like statistics (``G Gᵀ`` of a Gaussian ``d x 2d`` gradient, relative ridge 1e-4).

Usage::

    OPENBLAS_NUM_THREADS=1 python benchmarks/root_methods.py --sizes 64,128,256,512,1024 \\
        --json docs/results/root_methods_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.optim import linalg


def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(d: int, batch: int, repeats: int) -> dict:
    rng = np.random.default_rng(d)
    g = rng.standard_normal((batch, d, 2 * d)).astype(np.float32)
    stats = jnp.asarray(g @ g.transpose(0, 2, 1) / (2 * d))
    row: dict = {"size": d, "batch": batch}
    for method in ("eigh", "newton"):
        one = jax.jit(lambda m, method=method: linalg.inverse_root(m, 0.25, 1e-4, method=method))
        row[f"root_{method}_s"] = _time(one, stats[0], repeats=repeats)

        def per_matrix(s, method=method):
            return [linalg.inverse_root(s[i], 0.25, 1e-4, method=method) for i in range(batch)]

        def batched(s, method=method):
            return linalg.inverse_root(s, 0.25, 1e-4, method=method)

        row[f"root_{method}_per_matrix_x{batch}_s"] = _time(
            jax.jit(per_matrix), stats, repeats=repeats
        )
        row[f"root_{method}_batched_x{batch}_s"] = _time(jax.jit(batched), stats, repeats=repeats)
    damp = jnp.trace(stats[0]) * 0.1
    for method in ("cholesky", "eigh", "newton"):
        inv = jax.jit(lambda m, method=method: linalg.damped_inverse(m, damp, method))
        row[f"inverse_{method}_s"] = _time(inv, stats[0], repeats=repeats)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64,128,256,512,1024")
    parser.add_argument("--batch", type=int, default=4, help="same-shaped matrices (default 4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for d in (int(s) for s in args.sizes.split(",")):
        row = bench(d, args.batch, args.repeats)
        rows.append(row)
        print(
            f"d={d}: root eigh {1e3 * row['root_eigh_s']:.1f} ms, newton "
            f"{1e3 * row['root_newton_s']:.1f} ms; x{args.batch} per-matrix eigh "
            f"{1e3 * row[f'root_eigh_per_matrix_x{args.batch}_s']:.1f} / batched "
            f"{1e3 * row[f'root_eigh_batched_x{args.batch}_s']:.1f} ms, newton "
            f"{1e3 * row[f'root_newton_per_matrix_x{args.batch}_s']:.1f} / "
            f"{1e3 * row[f'root_newton_batched_x{args.batch}_s']:.1f} ms; inverse cholesky "
            f"{1e3 * row['inverse_cholesky_s']:.1f}, eigh {1e3 * row['inverse_eigh_s']:.1f}, "
            f"newton {1e3 * row['inverse_newton_s']:.1f} ms",
            flush=True,
        )
    payload = {
        "benchmark": "root_methods",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "load_average": os.getloadavg(),
        },
        "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
