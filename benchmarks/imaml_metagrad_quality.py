"""How close iMAML's implicit meta-gradient is to the gradient of what its training measures.

iMAML's meta-training evaluates the query loss at θ_K, the end of its K-step inner loop (the
proximal loss from θ₀), and steps θ₀ along the implicit meta-gradient ``(I + H/λ)⁻¹ ∇L_query(θ_K)``
(H: the support loss's Hessian at θ_K), which is ``dL_query(θ*)/dθ₀`` only at an exact minimum θ*
of the proximal loss. This script compares, per training task at a trained run's θ₀, these
meta-gradients against the exact derivative of the measured loss, ``d L_query(θ_K(θ₀)) / dθ₀``
(differentiated through the inner loop, the same K heavy-ball steps; algorithm ``maml`` with the
run's proximal term and momentum):

* ``implicit_cg{k}``: the implicit meta-gradient with k CG steps on ``(I + H/λ) x = g``, as the
  library computes it (``Algorithm(method="implicit", cg_steps=k)``);
* ``ggn_cg{k}``: the same system with the Gauss-Newton matrix G of the support loss
  (``Jᵀ ∇²ℓ J``, positive semi-definite) in place of H: always a definite system;
* ``first_order``: ``g = ∇L_query(θ_K)`` itself (first-order iMAML / first-order MAML).

Figures: cosine with the unrolled derivative and norm ratio, per task (median over tasks) and
of the meta-batch means (groups of 8 tasks, as a meta-step). Float32 model, CG in float32.

    python benchmarks/imaml_metagrad_quality.py [RUN_FOLDER] [--tasks 32]

Writes ``RUN/metagrad_quality.json``.

With ``--outliers``: the meta-gradient's norm over 12 training meta-batches (meta-batch 8) at
the initialisation and at the run's θ₀, without and with ``cg_max_gain = 1``; the per-task
implicit meta-gradients' norms over those 96 tasks; and for the four longest and three typical
ones, the unrolled derivative's norm and its cosine with the implicit one, the task's
``‖∇ inner loss(θ*)‖`` and its inner loss along the 16 steps. Writes ``RUN/outliers.json``.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from metagrad.data import episodes_at
from metagrad.fewshot.adaptation import adapt_task, meta_batch_loss
from metagrad.fewshot.algorithms import make_algorithm
from metagrad.fewshot.network import apply_layers, task_losses
from metagrad.fewshot.training import initial_state, load_trained

CG_STEPS = (5, 10, 20)


def cg(matvec, b, iters: int):
    x = jnp.zeros_like(b)
    r = b
    p = r
    for _ in range(iters):
        ap = matvec(p)
        alpha = (r @ r) / (p @ ap)
        x = x + alpha * p
        r_new = r - alpha * ap
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
    return x


def meta_gradients(model, algorithm, meta, task) -> dict[str, np.ndarray]:
    """The candidate meta-gradients (flattened, w.r.t. θ₀) of one task."""
    sx, sy, qx, qy = task
    lam = algorithm.proximal
    loss_fn, _ = task_losses("classification")

    def measured(m, alg):
        return adapt_task(model, alg, m, task).loss

    unroll = unrolled_twin(algorithm)
    out = {"unrolled": ravel_pytree(jax.grad(measured)(meta, unroll)["params"])[0]}
    for k in CG_STEPS:
        alg = dataclasses.replace(algorithm, cg_steps=k)
        out[f"implicit_cg{k}"] = ravel_pytree(jax.grad(measured)(meta, alg)["params"])[0]

    adapted = adapt_task(model, algorithm, meta, task, predict=False).params
    flat, unravel = ravel_pytree(adapted)

    def logits(v):
        return apply_layers(model, unravel(v), sx, 0)

    def query(v):
        return loss_fn(apply_layers(model, unravel(v), qx, 0), qy)

    g = jax.grad(query)(flat)
    out["first_order"] = g
    z = logits(flat)

    @jax.jit
    def ggn(u):
        # Jᵀ ∇²ℓ J u: J u forward, the loss's Hessian in the logits, Jᵀ backward.
        ju = jax.jvp(logits, (flat,), (u,))[1]
        hju = jax.jvp(jax.grad(lambda o: loss_fn(o, sy)), (z,), (ju,))[1]
        return jax.vjp(logits, flat)[1](hju)[0]

    for k in CG_STEPS:
        out[f"ggn_cg{k}"] = cg(lambda u: u + ggn(u) / lam, g, k)
    return {name: np.asarray(v, np.float64) for name, v in out.items()}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def unrolled_twin(algorithm):
    """The same inner loop (steps, lr, momentum, proximal term), differentiated through."""
    return make_algorithm(
        "maml", steps=algorithm.steps, inner_lr=algorithm.inner_lr,
        inner_momentum=algorithm.inner_momentum, proximal=algorithm.proximal, mode="mixflow",
    )  # fmt: skip


def outliers(run: str, batches: int = 12, first_step: int = 20_000) -> dict:
    """Where the meta-gradient's outliers come from (see the module docstring)."""
    config, step, splits, model, meta = load_trained(run)
    algorithm = config.make_algorithm()
    init = initial_state(config, model)["meta"]
    episodes = [
        tuple(episodes_at(splits.train, config.ways, config.shots, config.queries,
                          config.meta_batch, config.seed, first_step + s))
        for s in range(batches)
    ]  # fmt: skip
    out: dict = {"run": run, "step": step, "meta_batches": batches, "meta_batch_norms": {}}
    capped = dataclasses.replace(algorithm, cg_max_gain=1.0)
    for label, m, alg in (("init", init, algorithm), ("trained", meta, algorithm),
                          ("trained, cg_max_gain 1", meta, capped)):  # fmt: skip
        grad = jax.jit(jax.grad(lambda p, t, a=alg: meta_batch_loss(model, a, p, t)[0]))
        norms = [float(np.linalg.norm(ravel_pytree(grad(m, e))[0])) for e in episodes]
        out["meta_batch_norms"][label] = norms
        print(f"meta-batch norms, {label}: " + " ".join(f"{n:.2f}" for n in norms), flush=True)

    def per_task(alg):
        def f(m, task):
            r = adapt_task(model, alg, m, task)
            return r.loss, r

        return jax.jit(jax.grad(f, has_aux=True))

    implicit, unrolled = per_task(algorithm), per_task(unrolled_twin(algorithm))
    rows = []
    for b, e in enumerate(episodes):
        for i in range(config.meta_batch):
            task = tuple(a[i] for a in e)
            g, r = implicit(meta, task)
            rows.append({"batch": b, "task": i, "grad": ravel_pytree(g["params"])[0],
                         "inner_gradient_norm": float(r.inner_gradient_norm),
                         "query_accuracy": float(r.accuracy),
                         "inner_losses": np.asarray(r.inner_losses).tolist(), "x": task})  # fmt: skip
    for row in rows:
        row["norm"] = float(np.linalg.norm(row["grad"]))
    rows.sort(key=lambda row: -row["norm"])
    norms = [row["norm"] for row in rows]
    out["task_norms"] = {"median": float(np.median(norms)),
                         "p90": float(np.percentile(norms, 90)), "sorted": norms}  # fmt: skip
    print(f"per-task implicit norms: median {np.median(norms):.2f}, 90th percentile "
          f"{np.percentile(norms, 90):.2f}, longest {norms[:4]}")  # fmt: skip
    mid = len(rows) // 2
    out["tasks"] = []
    for row in rows[:4] + rows[mid : mid + 3]:
        g, _ = unrolled(meta, row["x"])
        u = ravel_pytree(g["params"])[0]
        entry = {k: row[k] for k in ("batch", "task", "norm", "inner_gradient_norm",
                                     "query_accuracy", "inner_losses")}  # fmt: skip
        entry["unrolled_norm"] = float(np.linalg.norm(u))
        entry["cosine"] = cosine(np.asarray(u, np.float64), np.asarray(row["grad"], np.float64))
        out["tasks"].append(entry)
        print(f"batch {row['batch']} task {row['task']}: implicit {row['norm']:.2f}, unrolled "
              f"{entry['unrolled_norm']:.2f}, cosine {entry['cosine']:+.3f}, ‖∇ inner(θ*)‖ "
              f"{row['inner_gradient_norm']:.2f}, inner loss "
              f"{' '.join(f'{v:.2f}' for v in row['inner_losses'][::4])}", flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", default="results/fewshot/glyphs_5w1s_imaml")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--episode-step", type=int, default=10_000)
    parser.add_argument("--outliers", action="store_true")
    args = parser.parse_args()
    if args.outliers:
        summary = outliers(args.run)
        Path(args.run, "outliers.json").write_text(json.dumps(summary, indent=1))
        return
    config, step, splits, model, meta = load_trained(args.run)
    algorithm = config.make_algorithm()
    # Training tasks of a step past the run (not ones the run stepped on).
    batch = episodes_at(splits.train, config.ways, config.shots, config.queries, args.tasks,
                        config.seed, args.episode_step)  # fmt: skip
    grads = []
    for i in range(args.tasks):
        task = tuple(a[i] for a in batch)
        grads.append(meta_gradients(model, algorithm, meta, task))
        row = grads[-1]
        print(f"task {i}: " + ", ".join(
            f"{name} cos {cosine(v, row['unrolled']):+.3f} ratio "
            f"{np.linalg.norm(v) / np.linalg.norm(row['unrolled']):.2f}"
            for name, v in row.items() if name != "unrolled"), flush=True)  # fmt: skip
    names = [n for n in grads[0] if n != "unrolled"]
    summary: dict = {"run": args.run, "step": step, "tasks": args.tasks, "per_task": {},
                     "meta_batch_8": {}}  # fmt: skip
    for name in names:
        cos = [cosine(g[name], g["unrolled"]) for g in grads]
        ratio = [np.linalg.norm(g[name]) / np.linalg.norm(g["unrolled"]) for g in grads]
        summary["per_task"][name] = {
            "cosine_median": float(np.median(cos)), "cosine_min": float(np.min(cos)),
            "norm_ratio_median": float(np.median(ratio)),
        }  # fmt: skip
        batches = [grads[i : i + 8] for i in range(0, len(grads) - 7, 8)]
        summary["meta_batch_8"][name] = [
            cosine(sum(g[name] for g in b), sum(g["unrolled"] for g in b)) for b in batches
        ]
    print(f"\n{args.run} (step {step}), {args.tasks} training tasks; cosine with the unrolled "
          "derivative of the measured query loss")  # fmt: skip
    print(f"{'meta-gradient':<16} {'task median':>12} {'task min':>9} {'|g|/|unrolled|':>15}"
          f"  meta-batch of 8")  # fmt: skip
    for name in names:
        t = summary["per_task"][name]
        mb = " ".join(f"{c:+.3f}" for c in summary["meta_batch_8"][name])
        print(f"{name:<16} {t['cosine_median']:>+12.3f} {t['cosine_min']:>+9.3f} "
              f"{t['norm_ratio_median']:>15.2f}  {mb}")  # fmt: skip
    Path(args.run, "metagrad_quality.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
