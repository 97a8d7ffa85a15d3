"""The one adaptation routine of the MAML family, built on ``metagrad.Bilevel``.

``adapt_task`` adapts θ₀ (``meta["params"]``) to a task's support set and evaluates the query
set. Every algorithm in ``algorithms.py`` and every Lambda pattern is a configuration of it:

1. The pattern's frozen prefix (layers no step updates) is run once per task, outside the inner
   loop: its outputs ("features") still depend on θ₀'s prefix and stay differentiable, because
   the mixed-mode gradient node gives mixed products for every floating-point input, batch
   included.
2. The remaining layers are the inner problem: ``Bilevel(init_params=lambda meta:
   meta["params"][c:], update_masks=pattern rows, first_order=..., mode=...)``. Within each run of
   equal rows, only the active layers are differentiated.
3. The adapted suffix is applied to the cached query features.

``meta_step`` maps this over a meta-batch of tasks with ``jax.lax.map`` (sequential: on CPU it
beats ``vmap``, which turns per-task convolutions into slow grouped ones), averages, takes
``jax.value_and_grad`` and applies an optax outer optimiser, all in one jitted program.

With ``algorithm.method == "implicit"`` (iMAML) the inner loss has the proximal term
``λ/2 ‖θ − θ₀‖²`` and step 2's ``Bilevel`` differentiates through the minimum it reaches instead
of its steps (``Bilevel(method="implicit")``).

References:
  Finn et al., ICML 2017 (MAML); Rajeswaran et al., NeurIPS 2019 (iMAML); Khabarlak 2022, arXiv:2206.05930 (Lambda patterns).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metagrad.bilevel import Bilevel, meta_train_step
from metagrad.fewshot.algorithms import Algorithm
from metagrad.fewshot.network import Model, apply_layers, n_layers, task_losses
from metagrad.fewshot.patterns import Pattern
from metagrad.implicit import ImplicitConfig
from metagrad.nonfinite import leaf_finiteness

Array = jax.Array
Meta = dict[str, Any]
# One task: (support_x, support_y, query_x, query_y), without a meta-batch axis.
Task = tuple[Array, Array, Array, Array]


class TaskResult(NamedTuple):
    """What adapting to one task gives.

    Attributes:
      loss: the query loss after adaptation (the outer objective).
      accuracy: query accuracy (NaN for regression).
      inner_losses: support loss before each inner step, shape ``(K,)`` (NaN at a step that
        updates nothing).
      params: the adapted parameters, full list (the frozen prefix is θ₀'s).
      inner_gradient_norm: ``‖∇ inner loss‖`` at the adapted parameters, how far the inner loop
        ended from a stationary point (a constant; NaN unless the algorithm is implicit, whose
        meta-gradient assumes one).
    """

    loss: Array
    accuracy: Array
    inner_losses: Array
    params: list[dict[str, Array]]
    inner_gradient_norm: Array


def resolve_pattern(
    model: Model, algorithm: Algorithm, pattern: Pattern | None, steps: int | None
) -> Pattern:
    """The pattern to run: ``pattern`` if given, else the algorithm's training pattern, extended or
    cut to ``steps`` rows when ``steps`` is given."""
    n = n_layers(model)
    if pattern is None:
        pattern = algorithm.train_pattern(n)
        if steps is not None and steps != pattern.steps:
            pattern = pattern.with_steps(steps)
    elif steps is not None and steps != pattern.steps:
        raise ValueError(
            f"adapt_task: pattern has {pattern.steps} rows but steps={steps}; pass one of them."
        )
    if pattern.layers != n:
        raise ValueError(
            f"adapt_task: pattern has {pattern.layers} columns but the model has {n} layers "
            f"(got pattern {pattern.code!r})."
        )
    return pattern


def adapt_task(
    model: Model,
    algorithm: Algorithm,
    meta: Meta,
    task: Task,
    *,
    pattern: Pattern | None = None,
    steps: int | None = None,
    kind: str = "classification",
    cache_features: bool = True,
    cache_at: int | None = None,
    predict: bool = True,
) -> TaskResult:
    """Adapts to one task's support set and evaluates its query set (differentiable in ``meta``).

    Args:
      model: a model with ``layer_functions()`` (``Conv4``, ``MLP``, or a ``LayerStack`` around
        an Equinox, Flax or plain-function network), parameters one pytree per layer.
      algorithm: the MAML-family configuration (learning rates, first order, mode, ...).
      meta: meta-parameters from ``algorithm.init_meta(params)``.
      task: ``(support_x, support_y, query_x, query_y)`` of one task.
      pattern: the Lambda pattern; default: the algorithm's training pattern. Use a different one
        at test time for test-time-only patterns.
      steps: inner steps; default: the pattern's (or the algorithm's) number of steps.
      kind: ``"classification"`` (cross-entropy, accuracy) or ``"regression"`` (MSE).
      cache_features: compute the frozen prefix once per task (default). ``False`` runs every
        layer inside the loop (same numbers; for tests and measurements).
      cache_at: cache a prefix of this many layers (≤ the frozen prefix) instead of all of it.
      predict: evaluate the query set (default). ``False`` only adapts (loss and accuracy are
        NaN): what "adaptation time" measures.

    Returns:
      A :class:`TaskResult`.
    """
    pattern = resolve_pattern(model, algorithm, pattern, steps)
    loss_fn, metric = task_losses(kind)
    sx, sy, qx, qy = task
    c = pattern.frozen_prefix if cache_features else 0
    if cache_at is not None:
        if not 0 <= cache_at <= pattern.frozen_prefix:
            raise ValueError(
                f"adapt_task: cache_at must be in [0, {pattern.frozen_prefix}] (the pattern's "
                f"frozen prefix); got {cache_at}."
            )
        c = cache_at
    prefix = meta["params"][:c]
    # Cached features: computed once, outside the inner loop; they depend on θ₀'s prefix.
    hs = apply_layers(model, prefix, sx, 0)

    proximal = algorithm.proximal

    def inner_loss(p: list[dict[str, Array]], m: Meta, batch: tuple[Array, Array]) -> Array:
        loss = loss_fn(apply_layers(model, p, batch[0], c), batch[1])
        if proximal:
            # iMAML's proximal term λ/2 ‖θ − θ₀‖²: it is how θ₀ shapes the inner minimum.
            gaps = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), p, m["params"][c:])
            loss = loss + 0.5 * proximal * sum(jax.tree.leaves(gaps))
        return loss

    def task_loss(p: list[dict[str, Array]], m: Meta, batch: tuple[Array, Array]) -> Array:
        del m
        return loss_fn(apply_layers(model, p, batch[0], c), batch[1])

    gradient_norm = jnp.full((), jnp.nan, hs.dtype)
    if c == pattern.layers:
        # Nothing is updated: no inner loop at all.
        suffix = meta["params"][c:]
        inner_losses = jnp.full((pattern.steps,), jnp.nan, hs.dtype)
    else:
        masks = [list(row[c:]) for row in pattern.matrix]
        if algorithm.method == "implicit" and not all(all(r) for r in masks):
            raise ValueError(
                f"adapt_task: {algorithm.name} (method='implicit') adapts every layer at every "
                f"step; got pattern {pattern.code!r}. Use the full pattern, or an unrolled "
                "algorithm (e.g. maml) for Lambda patterns."
            )
        problem = Bilevel(
            inner_loss=inner_loss,
            outer_loss=task_loss,
            inner_optimizer=lambda m: algorithm.inner_optimizer(m, c),
            steps=pattern.steps,
            init_params=lambda m: m["params"][c:],
            mode=algorithm.mode,
            memory_budget=algorithm.memory_budget,
            update_masks=None if all(all(r) for r in masks) else masks,
            first_order=algorithm.first_order,
            method=algorithm.method,
            implicit=(
                # exactly cg_steps CG iterations (tol 0), as iMAML
                ImplicitConfig(
                    solver="cg",
                    maxiter=algorithm.cg_steps,
                    tol=0.0,
                    damping=algorithm.cg_damping,
                    negative_curvature=algorithm.cg_negative_curvature,
                    # the system is (H + λI) x = g, the meta-gradient λx: a gain of ρ/λ in x
                    max_gain=(
                        None
                        if algorithm.cg_max_gain is None
                        else algorithm.cg_max_gain / algorithm.proximal
                    ),
                    warn=False,
                )
                if algorithm.method == "implicit"
                else None
            ),
        )
        result = problem.adapt(meta, inner_batch=(hs, sy))
        suffix, inner_losses = result.params, result.losses
        if algorithm.method == "implicit":
            # One more gradient (~1/20 of the inner loop and solve): the implicit function
            # theorem's premise, ∇ inner loss(θ*) = 0, measured.
            at = jax.lax.stop_gradient((suffix, meta, hs))
            g = jax.grad(inner_loss)(at[0], at[1], (at[2], sy))
            gradient_norm = optax.tree_utils.tree_norm(g)
    full = list(prefix) + list(suffix)
    if not predict:
        nan = jnp.full((), jnp.nan, hs.dtype)
        return TaskResult(nan, nan, inner_losses, full, gradient_norm)
    out = apply_layers(model, suffix, apply_layers(model, prefix, qx, 0), c)
    loss = loss_fn(out, qy)
    acc = metric(out, qy) if metric is not None else jnp.full((), jnp.nan, loss.dtype)
    return TaskResult(loss, acc, inner_losses, full, gradient_norm)


def meta_batch_loss(
    model: Model,
    algorithm: Algorithm,
    meta: Meta,
    tasks: Task,
    *,
    pattern: Pattern | None = None,
    steps: int | None = None,
    kind: str = "classification",
) -> tuple[Array, dict[str, Array]]:
    """Mean query loss over a meta-batch (leading axis of every array in ``tasks``).

    Tasks are mapped sequentially with ``jax.lax.map``. With ``algorithm.stationarity_tol``, the
    loss of a task whose inner loop ended away from a stationary point is a constant
    (``stop_gradient``): it counts in the value, not in the meta-gradient.

    Returns:
      ``(mean loss, {"loss": per-task losses, "accuracy": per-task accuracies})``, plus
      ``"stationary"`` (per task, whether it gave a meta-gradient) with ``stationarity_tol``.
    """
    tol = algorithm.stationarity_tol

    def one(task: Task) -> dict[str, Array]:
        r = adapt_task(model, algorithm, meta, task, pattern=pattern, steps=steps, kind=kind)
        if tol is None:
            return {"loss": r.loss, "accuracy": r.accuracy}
        stationary = r.inner_gradient_norm <= tol
        loss = jnp.where(stationary, r.loss, jax.lax.stop_gradient(r.loss))
        return {"loss": loss, "accuracy": r.accuracy, "stationary": stationary}

    per_task = jax.lax.map(one, tuple(tasks))
    return jnp.mean(per_task["loss"]), per_task


def batch_metrics(loss: Array, per_task: dict[str, Array]) -> dict[str, Array]:
    """The meta-step's metrics from :func:`meta_batch_loss`'s outputs: mean loss and accuracy
    and, with a stationarity test, the fraction of tasks that gave a meta-gradient."""
    metrics = {"loss": loss, "accuracy": jnp.mean(per_task["accuracy"])}
    if "stationary" in per_task:
        metrics["stationary"] = jnp.mean(per_task["stationary"].astype(loss.dtype))
    return metrics


# The key of the meta-step's metrics that holds, per meta-gradient leaf, "all entries finite".
FINITE = "meta_grad_finite"
# The key of the meta-gradient's global norm (before any clipping by the outer optimiser).
GRAD_NORM = "meta_grad_norm"


def make_meta_step(
    model: Model,
    algorithm: Algorithm,
    outer_optimizer: optax.GradientTransformation,
    *,
    pattern: Pattern | None = None,
    kind: str = "classification",
) -> Callable[[Meta, Any, Task], tuple[Meta, Any, dict[str, Array]]]:
    """The jitted meta-training step.

    Args:
      model: the network.
      algorithm: the MAML-family configuration.
      outer_optimizer: optax transformation of the meta-parameters (MAML: ``optax.adam(1e-3)``).
      pattern: the pattern used during meta-training (default: the algorithm's).
      kind: ``"classification"`` or ``"regression"``.

    Returns:
      ``step(meta, opt_state, tasks) -> (meta, opt_state, {"loss", "accuracy",
      "meta_grad_finite", "meta_grad_norm"})`` (means over the meta-batch; per meta-gradient
      leaf, whether it is finite; the meta-gradient's global norm, before any clipping):
      ``metagrad.meta_train_step`` of the meta-batch loss, jitted. A step with a non-finite
      loss or meta-gradient is not applied.
    """

    def objective(meta: Meta, *, tasks: Task) -> tuple[Array, dict[str, Array]]:
        return meta_batch_loss(model, algorithm, meta, tasks, pattern=pattern, kind=kind)

    train = meta_train_step(objective, outer_optimizer, has_aux=True, return_grad=True)

    # Jitted as a whole (not only ``train``): callers lower it (``step.lower(...)``) to read XLA's
    # memory and cost analyses of the meta-step.
    @jax.jit
    def step(meta: Meta, opt_state: Any, tasks: Task) -> tuple[Meta, Any, dict[str, Any]]:
        meta, opt_state, loss, per_task, grad = train(meta, opt_state, tasks=tasks)
        metrics = batch_metrics(loss, per_task)
        norm = optax.tree_utils.tree_norm(grad)
        return meta, opt_state, {**metrics, FINITE: leaf_finiteness(grad), GRAD_NORM: norm}

    return step


def make_adapt_fn(
    model: Model,
    algorithm: Algorithm,
    *,
    pattern: Pattern | None = None,
    steps: int | None = None,
    kind: str = "classification",
) -> Callable[[Meta, Task], dict[str, Array]]:
    """A jitted test-time function: adapt to every task of a batch, return per-task figures.

    Cached on its (hashable) arguments: the periodic validation of a training run, and every
    evaluation of the same pattern during selection, reuse one jitted function and therefore its
    compiled program instead of recompiling each time (~10-30 s for conv4 on CPU).

    Returns:
      ``fn(meta, tasks) -> {"loss": (B,), "accuracy": (B,)}``.
    """
    try:
        return _cached_adapt_fn(model, algorithm, pattern, steps, kind)
    except TypeError:  # an unhashable model (e.g. sizes given as a list): no caching
        return _adapt_fn(model, algorithm, pattern, steps, kind)


@functools.lru_cache(maxsize=64)
def _cached_adapt_fn(
    model: Model, algorithm: Algorithm, pattern: Pattern | None, steps: int | None, kind: str
) -> Callable[[Meta, Task], dict[str, Array]]:
    return _adapt_fn(model, algorithm, pattern, steps, kind)


def _adapt_fn(
    model: Model, algorithm: Algorithm, pattern: Pattern | None, steps: int | None, kind: str
) -> Callable[[Meta, Task], dict[str, Array]]:

    @jax.jit
    def fn(meta: Meta, tasks: Task) -> dict[str, Array]:
        _, per_task = meta_batch_loss(
            model, algorithm, meta, tasks, pattern=pattern, steps=steps, kind=kind
        )
        return per_task

    return fn
