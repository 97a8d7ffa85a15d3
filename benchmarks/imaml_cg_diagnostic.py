"""Why more conjugate-gradient steps made iMAML's training worse on the glyph benchmark.

For meta-parameters θ₀ of a trained run, on training tasks: adapt with the run's inner loop (θ*),
then look at iMAML's linear system ``(I + H/λ) x = ∇L_query(θ*)`` (H: the support loss's Hessian
at θ*, products forward-over-reverse): the extreme eigenvalues of H (power iteration; the system
is positive definite only if λ_min(H) > −λ), and, per CG iteration k, the relative residual, the
norm of x_k and its cosine with x_5 (the 5-step solution the benchmark's runs use). Also
whether CG met a direction of non-positive curvature (``pᵀAp ≤ 0``: CG's step is then undefined
and it diverges).

    python benchmarks/imaml_cg_diagnostic.py [RUN_FOLDER] [--tasks 8] [--cg 20]

Default run: ``results/fewshot/glyphs_5w1s_imaml`` (train it with
``benchmarks/fewshot_imaml_5way1shot.py``). Float64 for the linear algebra (the products are
computed in float32 by the model, then solved in float64). Writes ``RUN/cg_diagnostic.json``.
"""

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from metagrad.data import episodes_at
from metagrad.fewshot.adaptation import adapt_task
from metagrad.fewshot.network import apply_layers, task_losses
from metagrad.fewshot.training import load_trained


def power_iteration(matvec, n: int, iters: int, key) -> float:
    v = np.asarray(jax.random.normal(key, (n,)), np.float64)
    v /= np.linalg.norm(v)
    value = 0.0
    for _ in range(iters):
        w = matvec(v)
        value = float(v @ w)
        v = w / np.linalg.norm(w)
    return value


def conjugate_gradient(matvec, b: np.ndarray, iters: int) -> list[dict]:
    """Plain CG from x = 0 (as iMAML's solve), recording every iterate."""
    x = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    out = []
    for k in range(1, iters + 1):
        ap = matvec(p)
        curvature = float(p @ ap)
        alpha = float(r @ r) / curvature
        x = x + alpha * p
        r_new = r - alpha * ap
        beta = float(r_new @ r_new) / float(r @ r)
        p = r_new + beta * p
        r = r_new
        true_residual = np.linalg.norm(matvec(x) - b) / np.linalg.norm(b)
        out.append({"k": k, "x": x.copy(), "relative_residual": float(true_residual),
                    "nonpositive_curvature": curvature <= 0})  # fmt: skip
    return out


def diagnose_task(model, algorithm, meta, task, cg_iters: int, key) -> dict:
    """θ* of one task, H's extreme eigenvalues there, and CG's iterates on iMAML's system."""
    sx, sy, qx, qy = task
    lam = algorithm.proximal
    loss_fn, _ = task_losses("classification")
    adapted = adapt_task(model, algorithm, meta, task, predict=False).params
    flat, unravel = ravel_pytree(adapted)
    theta0, _ = ravel_pytree(meta["params"])

    def support(v):
        return loss_fn(apply_layers(model, unravel(v), sx, 0), sy)

    def query(v):
        return loss_fn(apply_layers(model, unravel(v), qx, 0), qy)

    hvp = jax.jit(lambda v, u: jax.jvp(jax.grad(support), (v,), (u,))[1])

    def h(u):
        return np.asarray(hvp(flat, jnp.asarray(u, flat.dtype)), np.float64)

    def system(u):
        return u + h(u) / lam

    b = np.asarray(jax.grad(query)(flat), np.float64)
    # Power iteration finds the eigenvalue of largest magnitude (it may be negative); the other
    # end of the spectrum is then the dominant eigenvalue of the shifted operator.
    dominant = power_iteration(h, flat.size, 60, key)
    if dominant > 0:
        top = dominant
        bottom = top - power_iteration(lambda u: top * u - h(u), flat.size, 200, key)
    else:
        bottom = dominant
        top = bottom + power_iteration(lambda u: h(u) - bottom * u, flat.size, 200, key)
    iterates = conjugate_gradient(system, b, cg_iters)
    x5 = iterates[4]["x"]
    inner_grad = np.asarray(jax.grad(support)(flat), np.float64) + lam * np.asarray(flat - theta0)
    return {
        "inner_gradient_norm": float(np.linalg.norm(inner_grad)),
        "hessian_top_eigenvalue": top,
        "hessian_bottom_eigenvalue": bottom,
        "system_positive_definite": bool(bottom > -lam),
        "cg": [
            {"k": it["k"], "relative_residual": it["relative_residual"],
             "x_norm": float(np.linalg.norm(it["x"])),
             "cos_with_x5": float(it["x"] @ x5 / np.linalg.norm(it["x"]) / np.linalg.norm(x5)),
             "nonpositive_curvature": it["nonpositive_curvature"]}
            for it in iterates
        ],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", nargs="?", default="results/fewshot/glyphs_5w1s_imaml")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--cg", type=int, default=20)
    args = parser.parse_args()
    config, step, splits, model, meta = load_trained(args.run)
    algorithm = config.make_algorithm()
    batch = episodes_at(splits.train, config.ways, config.shots, config.queries, args.tasks,
                        config.seed, 0)  # fmt: skip
    tasks = [tuple(a[i] for a in batch) for i in range(args.tasks)]
    rows = []
    for i, task in enumerate(tasks):
        row = diagnose_task(model, algorithm, meta, task, args.cg, jax.random.PRNGKey(i))
        rows.append({"task": i, **row})
        cg = row["cg"]
        print(
            f"task {i}: H eigenvalues [{row['hessian_bottom_eigenvalue']:.2f}, "
            f"{row['hessian_top_eigenvalue']:.1f}] (λ = {algorithm.proximal:g}), inner gradient "
            f"{row['inner_gradient_norm']:.2e}; CG residual k=5 {cg[4]['relative_residual']:.3f}, "
            f"k=10 {cg[9]['relative_residual']:.3f}, k={args.cg} {cg[-1]['relative_residual']:.3f};"
            f" |x10|/|x5| {cg[9]['x_norm'] / cg[4]['x_norm']:.2f}, cos(x10, x5) "
            f"{cg[9]['cos_with_x5']:.3f}; pAp<=0 at k = "
            f"{[c['k'] for c in cg if c['nonpositive_curvature']]}",
            flush=True,
        )
    summary = {"run": args.run, "step": step, "proximal": algorithm.proximal, "tasks": rows}
    Path(args.run, "cg_diagnostic.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
