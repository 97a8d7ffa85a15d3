"""Training curves of Shampoo with eigendecomposition roots against coupled-Newton roots.

The width task of ``docs/width.md`` (synthetic teacher task, MLP 784-W×3-10, μP, refresh every
10 steps): the same initialisation and batches are trained with ``root_method="eigh"`` and
``root_method="newton"``, and the minibatch losses are compared step by step. The two methods
compute the same matrix function (up to float32 rounding), so the curves should coincide.

Usage::

    python benchmarks/shampoo_root_curves.py --width 256 --steps 300 --seeds 2 \\
        --png docs/images/shampoo_eigh_vs_newton.png --json docs/results/shampoo_eigh_vs_newton.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.files import save_figure
from metagrad.optim import WidthConfig, find_layers, make_optimizer
from metagrad.optim.experiment import build, make_train, prepare_inputs
from metagrad.optim.tasks import load_task


def curves(width: int, steps: int, seeds: int, lr: float) -> dict[str, list[list[float]]]:
    task = load_task("synthetic")
    config = WidthConfig(optimizer="shampoo", param="mup", refresh=10)
    setup = build(config, width, task)
    x = prepare_inputs(config, task.x_train)
    y = jnp.asarray(task.y_train)
    shape_params = jax.eval_shape(setup.init, jax.random.key(0))
    layers = find_layers(setup.loss, shape_params, x[: config.batch_size], y[: config.batch_size])
    out = {}
    for method in ("eigh", "newton"):
        opt = make_optimizer(
            "shampoo",
            1.0,
            setup.shapes,
            param=config.param,
            layers=layers,
            root_method=method,
            **config.optimizer_kwargs(),
        )
        train = make_train(dataclasses.replace(setup, optimizer=opt), steps, config.batch_size)
        runs = []
        for seed in range(seeds):
            params = setup.init(jax.random.key(seed))
            _, losses = train(params, lr, jax.random.key(10_000 + seed), x, y)
            runs.append(np.asarray(losses, np.float64).tolist())
        out[method] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2.0**-6, help="the width task's Shampoo lr")
    parser.add_argument("--png", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    res = curves(args.width, args.steps, args.seeds, args.lr)
    e, n = np.asarray(res["eigh"]), np.asarray(res["newton"])
    summary = {
        "max_abs_loss_difference": float(np.max(np.abs(e - n))),
        "max_rel_loss_difference": float(np.max(np.abs(e - n) / np.abs(e))),
        "final_loss_eigh": e[:, -1].tolist(),
        "final_loss_newton": n[:, -1].tolist(),
    }
    print(json.dumps(summary, indent=2))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        t = np.arange(1, args.steps + 1)
        for s in range(args.seeds):
            axes[0].plot(t, e[s], color="C0", lw=1.2, label="eigh" if s == 0 else None)
            axes[0].plot(t, n[s], color="C1", lw=1, ls="--", label="newton" if s == 0 else None)
            axes[1].plot(t, np.abs(e[s] - n[s]), lw=1, label=f"seed {s}")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("minibatch loss")
        axes[0].set_title(f"Shampoo, μP MLP width {args.width}: eigh vs Newton roots", fontsize=9)
        axes[0].legend(fontsize=8)
        axes[1].set_yscale("log")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("|loss(eigh) - loss(newton)|")
        axes[1].set_title("difference", fontsize=9)
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, str(args.png), dpi=90)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "shampoo_root_curves",
            "width": args.width,
            "steps": args.steps,
            "seeds": args.seeds,
            "lr": args.lr,
            "summary": summary,
            "losses": res,
            "load_average": os.getloadavg(),
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
