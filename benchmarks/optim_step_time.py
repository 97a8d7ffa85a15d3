"""Step time of K-FAC and Shampoo against Adam and SGD on a wide MLP.

One step = capture of loss, gradient and curvature statistics + optimiser update + apply, jitted
as one function. Each optimiser is compiled, warmed up for one full refresh cycle, then timed
over ``--steps`` consecutive steps (a multiple of the refresh interval, so the expensive refresh
steps are included in proportion); the reported per-step time is the mean, with the median of
the non-refresh steps and the mean of the refresh steps alongside.

Acceptance (issue 4): K-FAC and Shampoo with refresh every 10 steps at most 3x an Adam step at
width 1024.

The reported per-step time is the mean, with the largest single step (``max``) alongside: with
``--groups k`` K-FAC and Shampoo are also timed with ``refresh_groups=k`` (staggered refresh),
whose largest step should be about ``k`` times smaller; ``--methods`` adds each root/inverse
method explicitly (what ``"auto"`` chooses between).

Usage::

    python benchmarks/optim_step_time.py --width 1024 --batch 128,1024 --json out.json
    # the GPU run of issue 16 (H200, after landing):
    python benchmarks/optim_step_time.py --width 1024 --batch 128,1024 --groups 5 --methods \
        --json docs/results/optim_step_time_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.console import Console
from rich.table import Table

from metagrad.models import MLP
from metagrad.optim import capture, find_layers, kfac, shampoo


def _loss_fn(model):
    def loss(params, x, y):
        logits = model.apply(params, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    return loss


def _variants(
    layers, refresh: int, groups: int, methods: bool
) -> dict[str, tuple[optax.GradientTransformation, bool]]:
    """name -> (preconditioner, needs curvature statistics)."""
    out = {
        "sgd": (optax.with_extra_args_support(optax.identity()), False),
        "adam": (optax.with_extra_args_support(optax.scale_by_adam()), False),
        f"kfac (refresh {refresh})": (
            kfac(layers, stats_every=refresh, inverse_every=refresh),
            True,
        ),
        f"kfac (stats every step, inverse {refresh})": (
            kfac(layers, stats_every=1, inverse_every=refresh),
            True,
        ),
        f"shampoo (refresh {refresh})": (
            shampoo(stats_every=refresh, precond_every=refresh, layers=layers),
            True,
        ),
        f"shampoo (refresh {refresh}, no row trick)": (
            shampoo(stats_every=refresh, precond_every=refresh),
            False,
        ),
    }
    if groups > 1:
        out[f"kfac (refresh {refresh}, {groups} groups)"] = (
            kfac(layers, stats_every=refresh, inverse_every=refresh, refresh_groups=groups),
            True,
        )
        out[f"shampoo (refresh {refresh}, {groups} groups)"] = (
            shampoo(
                stats_every=refresh, precond_every=refresh, refresh_groups=groups, layers=layers
            ),
            True,
        )
    if methods:  # the methods "auto" chooses between, explicitly
        for m in ("cholesky", "newton"):
            out[f"kfac (refresh {refresh}, {m})"] = (
                kfac(layers, stats_every=refresh, inverse_every=refresh, inverse_method=m),
                True,
            )
        for m in ("eigh", "newton"):
            out[f"shampoo (refresh {refresh}, {m})"] = (
                shampoo(stats_every=refresh, precond_every=refresh, root_method=m, layers=layers),
                True,
            )
            if groups > 1:
                out[f"shampoo (refresh {refresh}, {groups} groups, {m})"] = (
                    shampoo(
                        stats_every=refresh,
                        precond_every=refresh,
                        refresh_groups=groups,
                        root_method=m,
                        layers=layers,
                    ),
                    True,
                )
    return out


def bench_one(
    width: int,
    batch: int,
    depth: int,
    steps: int,
    refresh: int,
    only: set[str] | None,
    groups: int = 1,
    methods: bool = False,
):
    model = MLP(sizes=(784, *([width] * depth), 10))
    params = model.init(jax.random.key(0))
    loss = _loss_fn(model)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch))
    layers = find_layers(loss, params, x, y)
    grad_and_stats = capture(loss)
    rows = []
    for name, (opt, uses_stats) in _variants(layers, refresh, groups, methods).items():
        if only and name.split(" ")[0] not in only:
            continue

        def step(p, s, x, y, opt=opt, uses_stats=uses_stats):
            if uses_stats:
                value, g, st = grad_and_stats(p, x, y)
                u, s = opt.update(g, s, p, curvature=st)
            else:
                value, g = jax.value_and_grad(loss)(p, x, y)
                u, s = opt.update(g, s, p)
            u = jax.tree.map(lambda d: -1e-3 * d, u)
            return optax.apply_updates(p, u), s, value

        step = jax.jit(step, donate_argnums=(0, 1))
        p = jax.tree.map(jnp.copy, params)
        s = opt.init(p)
        t0 = time.perf_counter()
        p, s, v = step(p, s, x, y)
        jax.block_until_ready(v)
        compile_s = time.perf_counter() - t0
        for _ in range(refresh - 1):  # finish the first refresh cycle
            p, s, v = step(p, s, x, y)
        jax.block_until_ready(v)
        times, cpu_times = [], []
        for _ in range(steps):
            t, c = time.perf_counter(), time.process_time()
            p, s, v = step(p, s, x, y)
            jax.block_until_ready(v)
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
        refresh_steps = times[::refresh]
        other = [t for i, t in enumerate(times) if i % refresh]
        rows.append(
            {
                "optimizer": name,
                "mean_step_s": statistics.fmean(times),
                "median_plain_step_s": statistics.median(other) if other else None,
                "mean_refresh_step_s": statistics.fmean(refresh_steps),
                "max_step_s": max(times),
                "step_times_s": times,
                # CPU time of this process (all threads) per step: on a shared, oversubscribed
                # machine it counts only the work done, not the wait for a core.
                "mean_step_cpu_s": statistics.fmean(cpu_times),
                "max_step_cpu_s": max(cpu_times),
                "step_cpu_times_s": cpu_times,
                "compile_and_first_step_s": compile_s,
                "final_loss": float(v),
            }
        )
    adam = next((r["mean_step_s"] for r in rows if r["optimizer"] == "adam"), None)
    for r in rows:
        r["ratio_to_adam"] = r["mean_step_s"] / adam if adam else None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=3, help="hidden layers (default 3)")
    parser.add_argument("--batch", default="128,1024", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    parser.add_argument("--refresh", type=int, default=10, help="refresh interval (default 10)")
    parser.add_argument("--only", help="comma-separated optimizer families (sgd,adam,kfac,shampoo)")
    parser.add_argument(
        "--groups",
        type=int,
        default=1,
        help="also time K-FAC and Shampoo with refresh_groups=GROUPS (staggered refresh)",
    )
    parser.add_argument(
        "--methods",
        action="store_true",
        help="also time each root/inverse method explicitly (eigh/newton, cholesky/newton)",
    )
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--out", type=Path, help="directory for artefacts (a JSON copy)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    only = set(args.only.split(",")) if args.only else None
    console = Console()
    results = {}
    for batch in batches:
        rows = bench_one(
            args.width, batch, args.depth, args.steps, args.refresh, only, args.groups, args.methods
        )
        results[str(batch)] = rows
        table = Table(
            title=f"step time, MLP 784-{args.width}x{args.depth}-10, batch {batch}, "
            f"mean over {args.steps} steps"
        )
        cols = ("optimizer", "ms/step", "x Adam", "plain step ms", "refresh step ms", "max ms")
        for col in (*cols, "CPU ms/step", "max CPU ms"):
            table.add_column(col)
        for r in rows:
            plain = r["median_plain_step_s"]
            table.add_row(
                r["optimizer"],
                f"{1e3 * r['mean_step_s']:.1f}",
                f"{r['ratio_to_adam']:.2f}" if r["ratio_to_adam"] else "-",
                f"{1e3 * plain:.1f}" if plain else "-",
                f"{1e3 * r['mean_refresh_step_s']:.1f}",
                f"{1e3 * r['max_step_s']:.1f}",
                f"{1e3 * r['mean_step_cpu_s']:.1f}",
                f"{1e3 * r['max_step_cpu_s']:.1f}",
            )
        console.print(table)
    payload = {
        "benchmark": "optim_step_time",
        "width": args.width,
        "depth": args.depth,
        "steps": args.steps,
        "refresh": args.refresh,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": __import__("os").cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "load_average_at_end": __import__("os").getloadavg(),
        },
        "groups": args.groups,
        "results": results,
    }
    text = json.dumps(payload, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
        console.print(f"wrote {args.json}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "optim_step_time.json").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
