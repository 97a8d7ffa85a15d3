"""Which part of the decoder LM's logit change shrinks with width? (docs/width.md, μP for the LM)

The logits are ``z = W_outᵀ ĥ`` (``ĥ`` the final RMSNorm's output). After ``t`` steps their
change splits exactly into

    z_t − z_0 = (W_t − W_0)ᵀ ĥ_t   +   W_0ᵀ (ĥ_t − ĥ_0)
                read-out term          feature term

The read-out term is the μP update of the read-out (Θ(1) in the width if the read-out's learning
rate is right). The feature term is the feature change seen through the *initial* read-out: the
part of ``Δĥ`` along ``W_0``'s columns (which the backward signal ``W_0 δ`` put there) is Θ(1),
the rest is a random projection of size ``∝ 1/√width`` (``W_0`` has entries ``∝ 1/width``).
This script measures both terms (mean absolute value over a probe batch, mean over seeds) for
μP with a *random* read-out, the rule of K-FAC, against Adam and Shampoo with the same
initialisation, and fits their log-log slopes against width.

    python benchmarks/width_logit_terms.py                   # widths 64,128,256,512
    python benchmarks/width_logit_terms.py --widths 64,128,256,512,1024 --only kfac

Writes docs/results/width_logit_terms_lm.json (or ``--json PATH``). Settings of the coordinate
checks in docs/width.md: 2 blocks, 4 heads, sequences of 32 bytes, batch 16, 10 steps, 2 seeds,
probe of the first 64 training sequences, float32.
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from metagrad.files import write_json
from metagrad.optim.coord_check import fit_slope
from metagrad.optim.experiment import WidthConfig, build, make_train, prepare_inputs
from metagrad.optim.tasks import text_task

# optimiser -> (its learning rate at the base width from the LM sweeps of docs/width.md, options)
RUNS = {
    "kfac": (2.0**-8, {}),
    "adam": (2.0**-7, {}),
    "shampoo": (2.0**-4, {"refresh": 1}),
    # Textbook μP (SGD, Yang & Hu 2021), no sweep: a stable rate at the base width. The control:
    # its random read-out shows the same shrinking feature term as K-FAC's.
    "sgd": (0.5, {}),
}
TERMS = ("total", "readout", "feature")


def logit_terms(optimizer: str, widths: list[int], steps: int, seeds: int) -> dict:
    """Mean |term| per width (mean over seeds) and the fitted slopes, for one optimiser."""
    lr, options = RUNS[optimizer]
    config = WidthConfig(
        optimizer=optimizer, param="mup", model="lm", depth=2, batch_size=16, **options
    )
    task = text_task(seq_len=32, n_train=4096, progress=False)
    x, y = prepare_inputs(config, task.x_train), jnp.asarray(task.y_train)
    probe = x[:64]
    sizes: dict[str, list[float]] = {term: [] for term in TERMS}
    seconds = []
    for width in widths:
        t0 = time.perf_counter()
        setup = build(config, width, task)
        train = make_train(setup, steps, config.batch_size)
        apply = jax.jit(setup.model.apply)
        per_seed: dict[str, list[float]] = {term: [] for term in TERMS}
        for seed in range(seeds):
            p0 = setup.init(jax.random.key(seed))
            pt, _ = train(p0, lr, jax.random.key(10_000 + seed), x, y)
            z0, zt = apply(p0, probe), apply(pt, probe)
            # θ_t with the initial read-out: W_0ᵀ ĥ_t
            z_mixed = apply({**pt, "unembed": p0["unembed"]}, probe)
            for term, value in (("total", zt - z0), ("readout", zt - z_mixed),
                                ("feature", z_mixed - z0)):  # fmt: skip
                per_seed[term].append(float(jnp.mean(jnp.abs(value))))
        for term in TERMS:
            sizes[term].append(float(np.mean(per_seed[term])))
        seconds.append(time.perf_counter() - t0)
        print(
            f"{optimizer} width {width}: "
            + ", ".join(f"{term} {sizes[term][-1]:.4f}" for term in TERMS),
            flush=True,
        )
    return {
        "optimizer": optimizer,
        "param": "mup (random read-out)",
        "lr": lr,
        "options": options,
        "widths": widths,
        "size": sizes,
        "slopes": {term: fit_slope(widths, sizes[term]) for term in TERMS},
        "seconds": seconds,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,128,256,512")
    parser.add_argument("--only", default=",".join(RUNS), help="optimisers, comma-separated")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", default="docs/results/width_logit_terms_lm.json")
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    names = args.only.split(",")
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"--only: unknown optimiser(s) {unknown}; choose from {', '.join(RUNS)}.")
    results = [logit_terms(name, widths, args.steps, args.seeds) for name in names]
    print("\nslope of log2 mean |term| against log2 width, after step", args.steps)
    print(f"{'optimiser':<10} {'total':>8} {'read-out':>9} {'feature':>8}")
    for r in results:
        s = r["slopes"]
        print(
            f"{r['optimizer']:<10} {s['total']:>+8.2f} {s['readout']:>+9.2f} {s['feature']:>+8.2f}"
        )
    write_json(
        args.json,
        {"steps": args.steps, "seeds": args.seeds, "probe_size": 64, "dtype": "float32",
         "results": results},
    )  # fmt: skip
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
